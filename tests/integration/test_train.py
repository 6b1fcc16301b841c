"""`finetune train` end to end: a subprocess against the moto S3 server, real SIGTERMs."""

import json
import signal

import pytest

from tests.integration.conftest import final_weights, settings
from tests.support import jobs

pytestmark = pytest.mark.integration


def test_sigterm_checkpoints_to_s3_exits_143_and_resume_is_bitwise_identical(aws_env, bucket, job_inputs, tmp_path):
    rc, out = jobs.run(jobs.child_env(aws_env, **settings(job_inputs, bucket, "straight", tmp_path)), tmp_path)
    assert rc == 0, out[-3000:]

    env = jobs.child_env(aws_env, **settings(job_inputs, bucket, "interrupted", tmp_path))
    job = jobs.Job(env, tmp_path)
    job.wait_for("[metrics] step=30 ")
    job.signal(signal.SIGTERM)
    job.signal(signal.SIGTERM)  # a second signal must not disturb the save under way
    assert job.finish() == 143, job.output()[-3000:]
    line = job.wait_for("saving a checkpoint at step")
    stopped = int(line.rsplit("step ", 1)[1].split(",")[0])
    assert 30 <= stopped < 240
    keys = jobs.s3_keys(bucket, "runs/interrupted/checkpoints/")
    assert f"runs/interrupted/checkpoints/checkpoint-{stopped:09d}-g0001/finetune-manifest.json" in keys
    assert "steps_lost=0" in job.output()
    assert not any(k.startswith("runs/interrupted/model") for k in jobs.s3_keys(bucket, "runs/interrupted/"))

    rc, out = jobs.run(env, tmp_path)
    assert rc == 0, out[-3000:]
    assert f"restored checkpoint checkpoint-{stopped:09d}-g0001 (step {stopped})" in out
    metrics = json.loads(jobs.s3_bytes(bucket, "runs/interrupted/metrics.json"))
    assert metrics["resumed_from_step"] == stopped and metrics["global_step"] == 240
    assert metrics["eval_accuracy"] is not None

    straight, resumed = final_weights(bucket, "straight"), final_weights(bucket, "interrupted")
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert (straight[name] == resumed[name]).all(), name


def test_outputs_are_a_loadable_model_with_labels(aws_env, bucket, job_inputs, tmp_path):
    rc, out = jobs.run(
        jobs.child_env(aws_env, **dict(settings(job_inputs, bucket, "r", tmp_path), max_steps="10")), tmp_path
    )
    assert rc == 0, out[-3000:]
    keys = jobs.s3_keys(bucket, "runs/r/")
    for name in ("config.json", "model.safetensors", "tokenizer.json", "metrics.json"):
        assert f"runs/r/{name}" in keys
    config = json.loads(jobs.s3_bytes(bucket, "runs/r/config.json"))
    assert config["id2label"] == {"0": "0", "1": "1"}
    metrics = json.loads(jobs.s3_bytes(bucket, "runs/r/metrics.json"))
    assert metrics["global_step"] == 10 and metrics["resumed_from_step"] is None
    assert 0 <= metrics["eval_accuracy"] <= 1


def test_bad_settings_exit_64_with_every_problem_and_no_traceback(aws_env, bucket, job_inputs, tmp_path):
    env = jobs.child_env(
        aws_env, **dict(settings(job_inputs, bucket, "bad", tmp_path), save_steps="ten", lerning_rate="1")
    )
    rc, out = jobs.run(env, tmp_path)
    assert rc == 64
    assert "FT_SAVE_STEPS is invalid" in out and "Did you mean FT_LEARNING_RATE?" in out
    assert "Traceback" not in out
    assert jobs.s3_keys(bucket, "runs/bad/") == {}  # failed before touching anything


def test_missing_column_is_a_user_error(aws_env, bucket, job_inputs, tmp_path):
    env = jobs.child_env(aws_env, **dict(settings(job_inputs, bucket, "col", tmp_path), text_column="sentence"))
    rc, out = jobs.run(env, tmp_path)
    assert rc == 64 and "no column 'sentence' (from FT_TEXT_COLUMN)" in out and "Traceback" not in out


def test_missing_model_is_a_user_error(aws_env, bucket, job_inputs, tmp_path):
    env = jobs.child_env(
        aws_env, **dict(settings(job_inputs, bucket, "nomodel", tmp_path), model=f"s3://{bucket}/nothing/")
    )
    rc, out = jobs.run(env, tmp_path)
    assert rc == 64 and "Nothing found at s3://" in out and "Traceback" not in out
