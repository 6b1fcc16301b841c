"""`finetune check` as a subprocess against the moto server: what it finds before any training."""

import json
import subprocess

from entrypoint.durability import attempts
from entrypoint.io.storage import S3Store
from tests.integration.conftest import settings
from tests.support import jobs


def check(env: dict, cwd, *args: str) -> tuple[int, dict, str]:
    done = subprocess.run(
        jobs.finetune_cmd("check", "--json", *args), env=env, cwd=cwd, capture_output=True, text=True, timeout=300
    )
    report = json.loads(done.stdout) if done.stdout.strip().startswith("{") else {}
    return done.returncode, {f["check"]: f for f in report.get("findings", [])}, done.stderr


def test_a_good_job_passes_with_its_plan_labels_lengths_and_the_run_it_would_resume(
    aws_env, bucket, job_inputs, tmp_path
):
    store = S3Store(f"s3://{bucket}/runs/checked/checkpoints/")
    attempts.claim_generation(store, "an earlier attempt")  # a run already started at that location
    env = jobs.child_env(aws_env, **settings(job_inputs, bucket, "checked", tmp_path, max_length="16"))
    code, found, err = check(env, tmp_path)
    assert code == 0, err
    assert all(f["status"] != "fail" for f in found.values()), found
    assert found["write access"]["status"] == "ok" and "FT_OUTPUT_URI=" in found["write access"]["detail"]
    data = found["data"]["data"]
    assert (data["train_rows"], data["eval_rows"]) == (320, 80)
    assert set(data["labels"]) == {"0", "1"} and sum(data["labels"].values()) == 320
    # 320 rows / batch 4 = 80 steps an epoch, 3 epochs (conftest's job_inputs)
    assert found["plan"]["data"]["total_steps"] == 240 and found["plan"]["data"]["steps_per_epoch"] == 80
    lengths = found["token lengths"]["data"]
    assert lengths["max_length"] == 16 and 0 <= lengths["truncated_share"] <= 1 and lengths["p50"] <= lengths["max"]
    assert found["checkpoint"]["data"]["checkpoint_bytes"] > 0 and found["upload rate"]["data"]["mb_per_s"] > 0
    assert found["existing run"]["data"]["state"] == "in progress" and "will resume" in found["existing run"]["detail"]
    assert not S3Store(f"s3://{bucket}/runs/checked/").list("model"), "check trains and publishes nothing"


def test_a_missing_column_and_an_unwritable_output_are_both_found(aws_env, bucket, job_inputs, tmp_path):
    env = jobs.child_env(
        aws_env,
        **settings(job_inputs, bucket, "bad", tmp_path, text_column="sentence"),
    )
    env["FT_OUTPUT_URI"] = "s3://no-such-bucket-for-finetune-check/out/"
    code, found, err = check(env, tmp_path)
    assert code == 64, err
    assert found["write access"]["status"] == "fail" and "FT_OUTPUT_URI" in found["write access"]["detail"]
    assert found["data"]["status"] == "fail" and "'sentence'" in found["data"]["detail"]
    assert "Traceback" not in err


def test_an_unreadable_data_prefix_is_found(aws_env, bucket, job_inputs, tmp_path):
    env = jobs.child_env(
        aws_env, **settings(job_inputs, bucket, "nodata", tmp_path, train_data=f"s3://{bucket}/nothing-here/")
    )
    code, found, err = check(env, tmp_path)
    assert code == 64, err
    assert found["data"]["status"] == "fail" and "FT_TRAIN_DATA" in found["data"]["detail"]


def test_a_checkpoint_too_big_for_the_stop_window_is_a_warning_and_strict_fails(aws_env, bucket, job_inputs, tmp_path):
    env = jobs.child_env(aws_env, **settings(job_inputs, bucket, "tight", tmp_path, stop_grace_seconds="0.001"))
    code, found, err = check(env, tmp_path)
    assert code == 0, err
    assert found["checkpoint"]["status"] == "warn" and "MORE than the 0 s stop window" in found["checkpoint"]["detail"]
    code, _, _ = check(env, tmp_path, "--strict")
    assert code == 64
