"""`finetune train` end to end: a subprocess against the moto S3 server, real SIGTERMs."""

import json
import signal

import pytest

from tests.integration.conftest import final_weights, settings
from tests.support import jobs, tiny

pytestmark = pytest.mark.integration


def test_sigterm_checkpoints_to_s3_exits_143_and_resume_is_bitwise_identical(aws_env, bucket, job_inputs, tmp_path):
    run_settings = dict(settings(job_inputs, bucket, "straight", tmp_path), **jobs.STOPPABLE)
    rc, out = jobs.run(jobs.child_env(aws_env, **run_settings), tmp_path)
    assert rc == 0, out[-3000:]

    env = jobs.child_env(aws_env, **dict(settings(job_inputs, bucket, "interrupted", tmp_path), **jobs.STOPPABLE))
    job = jobs.Job(env, tmp_path)
    allowed = job.signal_between_steps("[metrics] step=30 ")
    job.signal(signal.SIGTERM)  # a second signal must not disturb the save under way
    assert job.finish() == 143, job.output()[-3000:]
    stopped = job.stop_step()
    assert stopped in allowed, f"the stop landed at step {stopped}, not at the next step boundary {sorted(allowed)}"
    assert 30 <= stopped < 240
    # No save is scheduled before the end (FT_SAVE_STEPS=100000): the one checkpoint is the stop's.
    assert jobs.complete_steps(env) == [stopped]
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


def test_a_second_job_on_the_same_work_dir_trains_on_its_own_data_only(aws_env, bucket, job_inputs, tmp_path):
    rows = tiny.sst2_rows("train", 120)
    for job, (yes, no) in {"first": ("alpha", "beta"), "second": ("gamma", "delta")}.items():
        labelled = [dict(r, label=yes if r["label"] == "1" else no) for r in rows]
        # Different file names under different prefixes: the first job's kept files would be read too.
        tiny.write_csv(tmp_path / job / "train" / f"{job}.csv", labelled[:100])
        tiny.write_csv(tmp_path / job / "eval.csv", labelled[100:])
        jobs.upload_folder(tmp_path / job, bucket, f"{job}/")
    outputs = []
    for job in ("first", "second"):
        env = jobs.child_env(
            aws_env,
            **dict(
                settings(job_inputs, bucket, job, tmp_path),
                train_data=f"s3://{bucket}/{job}/train/",
                eval_data=f"s3://{bucket}/{job}/eval.csv",
                work_dir=str(tmp_path / "shared-work"),
                max_steps="3",
            ),
        )
        rc, out = jobs.run(env, tmp_path)
        assert rc == 0, out[-3000:]
        outputs.append(out)
    assert json.loads(jobs.s3_bytes(bucket, "runs/first/config.json"))["id2label"] == {"0": "alpha", "1": "beta"}
    assert json.loads(jobs.s3_bytes(bucket, "runs/second/config.json"))["id2label"] == {"0": "delta", "1": "gamma"}
    assert "loaded FT_TRAIN_DATA: 100 rows from 1 file(s)" in outputs[1]
    model_files = len(jobs.s3_keys(bucket, job_inputs["model"].split("/", 3)[3]))
    assert f"FT_MODEL: {model_files} file(s) reused, 0 downloaded" in outputs[1]  # the same model: kept
