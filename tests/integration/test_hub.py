"""FT_MODEL as a Hub id and FT_TRAIN_DATA as hf://datasets/...: the job as a subprocess against the
fake Hub (tests/support/fake_hub.py, counting its requests) and the moto S3 server."""

import json

import pytest
from safetensors.torch import load_file, save_file

from tests.integration.conftest import assert_same_weights, final_weights, settings
from tests.support import fake_hub, jobs, tiny

pytestmark = pytest.mark.integration

MODEL_ID = "org/tiny-bert"


@pytest.fixture
def hub(tiny_assets):
    """The fake Hub serving the tiny model as org/tiny-bert (main)."""
    with fake_hub.FakeHub() as server:
        server.add(MODEL_ID, fake_hub.folder_files(tiny_assets / "model"))
        yield server


def hub_env(aws_env, hub, tmp_path, token=None, **run_settings):
    return fake_hub.child_env(jobs.child_env(aws_env, **run_settings), hub, tmp_path / "hf-home", token)


@pytest.mark.slow  # the default suite keeps one run of this path; make test-slow runs all
def test_a_hub_model_job_resumes_without_the_hub_bitwise_equal_to_an_uninterrupted_run(
    aws_env, bucket, job_inputs, hub, tmp_path
):
    commit = hub.repos[("model", MODEL_ID)].refs["main"]
    straight = settings(job_inputs, bucket, "straight", tmp_path, model=MODEL_ID, **jobs.STOPPABLE)
    rc, out = jobs.run(hub_env(aws_env, hub, tmp_path, **straight), tmp_path)
    assert rc == 0, out[-3000:]

    env = hub_env(
        aws_env,
        hub,
        tmp_path,
        **settings(job_inputs, bucket, "interrupted", tmp_path, model=MODEL_ID, **jobs.STOPPABLE),
    )
    job = jobs.Job(env, tmp_path)
    allowed = job.signal_between_steps("[metrics] step=30 ")
    assert job.finish() == 143, job.output()[-3000:]
    assert job.stop_step() in allowed
    assert f"FT_MODEL: {MODEL_ID}@main is commit {commit}: downloaded from the Hub and mirrored at" in job.output()
    mirrored = jobs.s3_keys(bucket, f"runs/interrupted/cache/hub/models/org--tiny-bert/{commit}/")
    assert f"runs/interrupted/cache/hub/models/org--tiny-bert/{commit}/model.safetensors" in mirrored

    asked = hub.count()
    hub.fail_with = 503  # an outage: a request would fail the attempt
    rc, out = jobs.run(env, tmp_path)
    assert rc == 0, out[-3000:]
    assert hub.count() == asked, f"the second attempt asked the Hub: {hub.requests[asked:]}"
    assert f"(step {job.stop_step()})" in out and "downloaded from the Hub" not in out
    assert_same_weights(final_weights(bucket, "straight"), final_weights(bucket, "interrupted"))

    record = {"hub_id": MODEL_ID, "revision": "main", "commit": commit}
    assert json.loads(jobs.s3_bytes(bucket, "runs/interrupted/metrics.json"))["model_source"] == record
    assert json.loads(jobs.s3_bytes(bucket, "runs/interrupted/config.json"))["finetune_base_model"] == record
    assert f"commit `{commit}`" in jobs.s3_bytes(bucket, "runs/interrupted/README.md").decode()


def test_a_gated_model_needs_hf_token(aws_env, bucket, job_inputs, tiny_assets, tmp_path):
    with fake_hub.FakeHub() as hub:
        hub.add("org/gated-bert", fake_hub.folder_files(tiny_assets / "model"), token="hf_secret")
        run = settings(job_inputs, bucket, "gated", tmp_path, model="org/gated-bert", max_steps="2")
        rc, out = jobs.run(hub_env(aws_env, hub, tmp_path, **run), tmp_path)
        assert rc == 64, out[-3000:]
        assert "FT_MODEL: org/gated-bert (revision main)" in out and "is gated (401); no HF_TOKEN is set" in out
        assert "Traceback" not in out

        rc, out = jobs.run(hub_env(aws_env, hub, tmp_path, token="hf_secret", **run), tmp_path)
        assert rc == 0, out[-3000:]


@pytest.mark.parametrize(
    ("model", "fail_with", "code", "message"),
    [
        ("org/no-such-model", None, 64, "FT_MODEL: org/no-such-model (revision main) on the Hub at"),
        (f"{MODEL_ID}@no-such-branch", None, 64, "no such revision (404)"),
        (MODEL_ID, 503, 75, "the Hub answered 503"),
    ],
)
def test_hub_failures_exit_as_the_users_or_the_worlds(
    aws_env, bucket, job_inputs, hub, tmp_path, model, fail_with, code, message
):
    hub.fail_with = fail_with
    run = settings(job_inputs, bucket, "fails", tmp_path, model=model, max_steps="2")
    rc, out = jobs.run(hub_env(aws_env, hub, tmp_path, **run), tmp_path)
    assert rc == code, out[-3000:]
    assert message in out and "Traceback" not in out


@pytest.mark.slow  # the default suite keeps one run of this path; make test-slow runs all
def test_a_revision_pinned_by_commit_downloads_that_commit(aws_env, bucket, job_inputs, tiny_assets, tmp_path):
    files = fake_hub.folder_files(tiny_assets / "model")
    other = {name: tensor + 1 for name, tensor in load_file(tiny_assets / "model" / "model.safetensors").items()}
    save_file(other, tmp_path / "other.safetensors", metadata={"format": "pt"})
    with fake_hub.FakeHub() as hub:
        old = hub.add(MODEL_ID, files)
        new = hub.add(MODEL_ID, dict(files, **{"model.safetensors": (tmp_path / "other.safetensors").read_bytes()}))
        assert hub.repos[("model", MODEL_ID)].refs["main"] == new
        run = settings(job_inputs, bucket, "pinned", tmp_path, model=f"{MODEL_ID}@{old}", max_steps="2")
        rc, out = jobs.run(hub_env(aws_env, hub, tmp_path, **run), tmp_path)
        assert rc == 0, out[-3000:]
        resolved = [path for _, path in hub.requests if "/resolve/" in path]
        assert resolved and all(f"/resolve/{old}/" in path for path in resolved)
    mirrored = jobs.s3_bytes(bucket, f"runs/pinned/cache/hub/models/org--tiny-bert/{old}/model.safetensors")
    assert mirrored == files["model.safetensors"]
    source = json.loads(jobs.s3_bytes(bucket, "runs/pinned/metrics.json"))["model_source"]
    assert source == {"hub_id": MODEL_ID, "revision": old, "commit": old}


@pytest.mark.slow  # the default suite keeps one run of this path; make test-slow runs all
def test_hub_data_is_mirrored_and_read_as_the_files_chosen(aws_env, bucket, job_inputs, hub, tmp_path):
    rows = tiny.sst2_rows("train", 120)
    tiny.write_csv(tmp_path / "sst" / "train" / "part.csv", rows[:100])
    tiny.write_csv(tmp_path / "sst" / "test.csv", rows[100:])  # another split in the same repo: not read
    commit = hub.add("org/sst", fake_hub.folder_files(tmp_path / "sst"), kind="dataset")
    run = settings(
        job_inputs, bucket, "data", tmp_path, model=MODEL_ID, train_data="hf://datasets/org/sst/train", max_steps="2"
    )
    rc, out = jobs.run(hub_env(aws_env, hub, tmp_path, **run), tmp_path)
    assert rc == 0, out[-3000:]
    assert "loaded FT_TRAIN_DATA: 100 rows from 1 file(s)" in out
    keys = jobs.s3_keys(bucket, f"runs/data/cache/hub/datasets/org--sst/{commit}/")
    assert f"runs/data/cache/hub/datasets/org--sst/{commit}/train/part.csv" in keys
    assert not any(k.endswith("test.csv") for k in keys)
