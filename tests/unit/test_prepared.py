"""The prepared-data key (pure), the task's info as JSON, and the cache at a moto S3 bucket."""

import json

import datasets
import pytest

from entrypoint import reporting, tasks
from entrypoint.config.platform import Runtime
from entrypoint.config.settings import JobSettings, load_settings
from entrypoint.durability.manifests import MANIFEST
from entrypoint.job import prepared


def job_settings(**extra):
    env = {"FT_MODEL": "m", "FT_TRAIN_DATA": "d", **{f"FT_{k.upper()}": v for k, v in extra.items()}}
    return load_settings(env, Runtime("local"))


def inputs(settings=None, data=None, tokenizer=None, libraries=None, code=None):
    return prepared.key_inputs(
        prepared.preprocessing_settings(settings or job_settings()),
        data or {"FT_TRAIN_DATA": {"train.csv": '"etag1":120'}},
        tokenizer or {"tokenizer.json": "aa", "config.json": "bb"},
        libraries or {"transformers": "5.24.0", "tokenizers": "0.23.3", "datasets": "5.2.0", "pyarrow": "20.0"},
        code or {"tasks/classification.py": "cc"},
    )


def test_the_same_inputs_give_the_same_key():
    assert prepared.cache_key(inputs()) == prepared.cache_key(inputs())
    assert len(prepared.cache_key(inputs())) == 32


@pytest.mark.parametrize(
    "changed",
    [
        {"data": {"FT_TRAIN_DATA": {"train.csv": '"etag2":120'}}},  # the data file changed
        {"data": {"FT_TRAIN_DATA": {"train.csv": '"etag1":120'}, "FT_EVAL_DATA": {"e.csv": "x"}}},
        {"tokenizer": {"tokenizer.json": "ab", "config.json": "bb"}},  # the tokenizer changed
        {"settings": job_settings(max_length="64")},
        {"settings": job_settings(label_column="sentiment")},
        {"settings": job_settings(text_column="sentence")},
        {"settings": job_settings(task="masked-lm")},
        {"settings": job_settings(task="causal-lm", packing="true")},
        {"settings": job_settings(validation_split="0.1")},
        {"settings": job_settings(class_weights="auto")},
        {"libraries": {"transformers": "5.25.0", "tokenizers": "0.23.3", "datasets": "5.2.0", "pyarrow": "20.0"}},
        {"code": {"tasks/classification.py": "cd"}},
    ],
)
def test_any_change_gives_another_key(changed):
    assert prepared.cache_key(inputs(**changed)) != prepared.cache_key(inputs())


@pytest.mark.parametrize(
    "extra",
    [
        {"learning_rate": "1e-4"},
        {"num_train_epochs": "7"},
        {"lora_r": "8"},
        {"output_uri": "s3://b/other/"},
        {"mlm_probability": "0.3"},
        {"seed": "3"},  # no validation split: the seed changes no data
        {"preprocessing_num_workers": "4"},
    ],
)
def test_settings_that_do_not_change_the_data_keep_the_key(extra):
    assert prepared.cache_key(inputs(settings=job_settings(**extra))) == prepared.cache_key(inputs())


def test_the_seed_counts_when_it_splits_the_data():
    split = job_settings(validation_split="0.1", seed="1")
    assert prepared.preprocessing_settings(split)["seed"] == 1
    other = job_settings(validation_split="0.1", seed="2")
    assert prepared.cache_key(inputs(settings=split)) != prepared.cache_key(inputs(settings=other))


def test_every_setting_not_listed_is_in_the_key():
    """A setting added later counts until someone lists it as not changing the data."""
    assert set(JobSettings.model_fields) >= prepared.NOT_PREPROCESSING
    chosen = set(prepared.preprocessing_settings(job_settings()))
    assert chosen == set(JobSettings.model_fields) - prepared.NOT_PREPROCESSING
    assert {"task", "label_column", "max_length", "packing", "messages_column"} <= chosen


def test_tokenizer_files_are_what_tokenization_reads(tmp_path):
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "config.json", "model.safetensors"):
        (tmp_path / name).write_text(name)
    (tmp_path / MANIFEST).write_text("{}")
    assert set(prepared.tokenizer_digests(tmp_path)) == {
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
        "config.json",
    }


def test_the_code_that_prepares_is_in_the_key():
    assert set(prepared.code_digests("sequence-classification")) >= {
        "tasks/classification.py",
        "job/preprocess.py",
        "job/data.py",
    }


def test_info_reads_back_as_it_was():
    info = {"id2label": {0: "neg", 1: "pos"}, "class_weights": [0.5, 1.5], "none": None, "nested": {2: {"a": 1}}}
    assert prepared.decode_info(json.loads(json.dumps(prepared.encode_info(info)))) == info


def small(rows=6):
    return datasets.Dataset.from_dict({"input_ids": [[1, 2, i] for i in range(rows)], "labels": list(range(rows))})


def test_the_cache_misses_then_hits_with_the_same_data(bucket, tmp_path, caplog):
    cache = prepared.Cache(f"s3://{bucket}/cache/", tmp_path / "work", 4)
    built = []

    def build():
        built.append(1)
        return tasks.Prepared(small(), small(2), {"id2label": {0: "a", 1: "b"}})

    assert cache.fetch("k1") is None
    cache.save("k1", {"why": "test"}, build, reporting.Stages())
    # another machine: a fresh work folder
    other = prepared.Cache(f"s3://{bucket}/cache/", tmp_path / "other", 4)
    with caplog.at_level("INFO"):
        folder = other.fetch("k1")
    assert f"prepared data: cache hit at s3://{bucket}/cache/prepared/k1 (key k1)" in caplog.text
    data = prepared.read(folder)
    assert data.train["input_ids"] == small()["input_ids"] and data.eval["labels"] == [0, 1]
    assert data.info == {"id2label": {0: "a", 1: "b"}} and built == [1]
    assert other.fetch("k2") is None


def test_a_corrupt_entry_is_a_miss(bucket, tmp_path):
    import boto3

    cache = prepared.Cache(f"s3://{bucket}/cache/", tmp_path / "work", 4)
    cache.save("k", {}, lambda: tasks.Prepared(small(), None, {"x": 1}), reporting.Stages())
    s3 = boto3.client("s3")
    key = "cache/prepared/k/info.json"
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b'{\n "x": 1\n}'
    s3.put_object(Bucket=bucket, Key=key, Body=b'{\n "x": 2\n}')  # same size, other bytes
    assert prepared.Cache(f"s3://{bucket}/cache/", tmp_path / "w2", 4).fetch("k") is None
    assert f"cache/prepared/k/{MANIFEST}" not in {o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
