"""A tiny model and data in S3 for the end-to-end tests."""

import boto3
import pytest

from tests.support import jobs, tiny


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    rows = tiny.sst2_rows("train", 400)
    tiny.build_tiny_bert(root / "model", [r["text"] for r in rows])
    tiny.write_csv(root / "train.csv", rows[:320])
    tiny.write_csv(root / "eval.csv", rows[320:])
    return root


@pytest.fixture
def job_inputs(tiny_assets, bucket):
    model = jobs.upload_folder(tiny_assets / "model", bucket, "models/tiny/")
    s3 = boto3.client("s3")
    s3.upload_file(str(tiny_assets / "train.csv"), bucket, "data/train.csv")
    s3.upload_file(str(tiny_assets / "eval.csv"), bucket, "data/eval.csv")
    return {
        "model": model,
        "train_data": f"s3://{bucket}/data/train.csv",
        "eval_data": f"s3://{bucket}/data/eval.csv",
        "num_train_epochs": "3",
        "per_device_train_batch_size": "4",
        "save_steps": "25",
        "logging_steps": "5",
        "seed": "7",
    }


@pytest.fixture(scope="session")
def bert_22m_assets(tiny_assets, tmp_path_factory):
    """A ~22M-parameter classifier with the tiny model's tokenizer (see tiny.build_bert_classifier)."""
    return tiny.build_bert_classifier(tmp_path_factory.mktemp("bert-22m") / "model", tiny_assets / "model")


@pytest.fixture
def bert_22m_model(bert_22m_assets, bucket):
    """The S3 URI of that model in this test's bucket (~90 MB): FT_MODEL instead of job_inputs' tiny one."""
    return jobs.upload_folder(bert_22m_assets, bucket, "models/bert-22m/")


def settings(job_inputs, bucket, run, tmp_path, **extra):
    return dict(job_inputs, output_uri=f"s3://{bucket}/runs/{run}/", work_dir=str(tmp_path / f"work-{run}"), **extra)


def final_weights(bucket, run):
    return jobs.load_safetensors(jobs.s3_bytes(bucket, f"runs/{run}/model.safetensors"))


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert (a[name] == b[name]).all(), name
