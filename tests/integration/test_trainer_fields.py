"""Trainer fields that would undo the job's own mechanisms, end to end (`finetune train` as a
subprocess against the moto S3 server): what config/trainer_fields.py decides is what happens."""

import uuid

import pytest

from tests.integration.conftest import settings
from tests.support import jobs

pytestmark = pytest.mark.integration


def every_object(bucket: str) -> dict[str, bytes]:
    return {key: jobs.s3_bytes(bucket, key) for key in jobs.s3_keys(bucket, "")}


def test_the_hub_token_is_in_no_object_in_s3_no_file_and_no_log_line(aws_env, bucket, job_inputs, tmp_path):
    token = f"hf_leakprobe{uuid.uuid4().hex}"
    run = settings(job_inputs, bucket, "hub", tmp_path, hub_token=token, max_steps="6", save_steps="3")
    rc, out = jobs.run(jobs.child_env(aws_env, **run), tmp_path)
    assert rc == 0, out[-3000:]
    objects = every_object(bucket)
    # The pickled arguments are where the Trainer would put it: checkpoints and the published model.
    assert any(k.startswith("runs/hub/checkpoints/") and k.endswith("/training_args.bin") for k in objects)
    assert "runs/hub/training_args.bin" in objects
    leaked = [key for key, data in objects.items() if token.encode() in data]
    assert not leaked, f"the token is in {leaked}"
    local = [p for p in (tmp_path / "work-hub").rglob("*") if p.is_file() and token.encode() in p.read_bytes()]
    assert not local, f"the token is in {local}"
    assert token not in out
    assert "FT_HUB_TOKEN is not passed to the Trainer" in out


def test_jit_checkpoint_and_save_only_model_are_refused_before_anything_is_written(
    aws_env, bucket, job_inputs, tmp_path
):
    run = settings(job_inputs, bucket, "refused", tmp_path, enable_jit_checkpoint="true", save_only_model="true")
    rc, out = jobs.run(jobs.child_env(aws_env, **run), tmp_path)
    assert rc == 64, out[-3000:]
    assert "2 problem(s) in the settings" in out
    assert "FT_ENABLE_JIT_CHECKPOINT cannot be set" in out and "FT_SAVE_ONLY_MODEL cannot be set" in out
    assert "Traceback" not in out
    assert jobs.s3_keys(bucket, "runs/") == {}
    assert not (tmp_path / "work-refused").exists()  # not even the scratch folder


@pytest.mark.slow  # the default suite keeps one run of this path; make test-slow runs all
def test_save_strategy_no_still_saves_the_stop_checkpoint_and_resumes(aws_env, bucket, job_inputs, tmp_path):
    """What trainer_fields says of FT_SAVE_STRATEGY=no: no periodic checkpoints, yet a SIGTERM
    saves one, exits 143, and the rerun resumes from it."""
    run = settings(job_inputs, bucket, "nosave", tmp_path, save_strategy="no", max_steps="60", **jobs.STOPPABLE)
    env = jobs.child_env(aws_env, **run)
    stopped, out = jobs.stop_and_resume(env, tmp_path)  # the one checkpoint at the location is the stop's
    assert 30 < stopped < 60 and "global_step=60" in out
