"""`finetune tune` end to end: a subprocess against the moto S3 server, a real SIGTERM mid-trial."""

import json
import signal

import pytest

from tests.integration.conftest import settings
from tests.support import jobs

pytestmark = pytest.mark.integration

SPACE = json.dumps(
    {"learning_rate": {"low": 1e-5, "high": 1e-3, "log": True}, "per_device_train_batch_size": {"choices": [4, 8]}}
)


def tune_json(bucket, run):
    return json.loads(jobs.s3_bytes(bucket, f"runs/{run}/tune.json"))


def states(report):
    return [(t["number"], t["state"]) for t in report["trials"]]


def test_search_records_every_trial_and_the_best_in_s3(aws_env, bucket, job_inputs, tmp_path):
    env = jobs.child_env(
        aws_env,
        **settings(job_inputs, bucket, "search", tmp_path, max_steps="10", tune_trials="3", tune_search_space=SPACE),
    )
    rc, out = jobs.run(env, tmp_path, "tune")
    assert rc == 0, out[-3000:]
    report = tune_json(bucket, "search")
    assert states(report) == [(0, "COMPLETE"), (1, "COMPLETE"), (2, "COMPLETE")]
    assert report["metric"] == "eval_accuracy" and report["direction"] == "maximize" and report["finished"]
    best = report["best"]
    assert best["value"] == max(t["value"] for t in report["trials"])
    assert set(best["params"]) == {"learning_rate", "per_device_train_batch_size"}
    assert 1e-5 <= best["params"]["learning_rate"] <= 1e-3 and best["params"]["per_device_train_batch_size"] in (4, 8)
    for trial in report["trials"]:
        assert f"[metrics] trial={trial['number']} objective={trial['value']:.6g}" in out
        assert trial["metrics"]["eval_accuracy"] == trial["value"]
    keys = jobs.s3_keys(bucket, "runs/search/")
    assert {"runs/search/optuna.db", "runs/search/checkpoints/optuna.db"} <= set(keys)
    assert not any("checkpoint-" in k or k.endswith(".safetensors") for k in keys)  # trials save nothing; no model


def test_sigterm_mid_trial_exits_143_and_a_rerun_completes_the_search(aws_env, bucket, job_inputs, tmp_path):
    # 30 steps per trial: long enough for the signal to land while trial 1 trains.
    env = jobs.child_env(
        aws_env,
        **settings(job_inputs, bucket, "resume", tmp_path, max_steps="30", tune_trials="3", tune_search_space=SPACE),
    )
    job = jobs.Job(env, tmp_path, "tune")
    job.wait_for("trial 1: ")
    job.signal(signal.SIGTERM)
    assert job.finish() == 143, job.output()[-3000:]
    assert "stop requested (SIGTERM) in trial 1: recorded as failed" in job.output()
    interrupted = tune_json(bucket, "resume")
    assert states(interrupted) == [(0, "COMPLETE"), (1, "FAIL")] and not interrupted["finished"]
    assert "runs/resume/checkpoints/optuna.db" in jobs.s3_keys(bucket, "runs/resume/")

    rc, out = jobs.run(env, tmp_path, "tune")
    assert rc == 0, out[-3000:]
    assert "resumed the study: 1 of 3 trials done, 2 to run" in out
    report = tune_json(bucket, "resume")
    assert states(report) == [(0, "COMPLETE"), (1, "FAIL"), (2, "COMPLETE"), (3, "COMPLETE")]
    assert report["trials"][2]["retry_of"] == 1
    assert report["trials"][2]["params"] == interrupted["trials"][1]["params"]
    assert report["trials"][0] == interrupted["trials"][0]  # the finished trial was not run again
    assert report["done"] == 3 and report["finished"] and report["best"]["trial"] in (0, 2, 3)
