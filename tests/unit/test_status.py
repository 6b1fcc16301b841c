"""`finetune status`: the summary is a pure function of what the job wrote; the command reads it
from a real S3 endpoint (moto) and, given a job name, from the platform."""

import json
import subprocess
import sys
from pathlib import Path

import boto3

from entrypoint.durability import attempts, checkpoints
from entrypoint.durability.checkpoints import UploadRequest
from entrypoint.durability.manifests import Checkpoint
from entrypoint.io.storage import S3Store
from entrypoint.ops import status

REPO = Path(__file__).resolve().parents[2]


def checkpoint(step: int, generation: int, created: float, complete: bool = True) -> Checkpoint:
    files = {"model.safetensors": 10}
    manifest = (
        {"format": 1, "created_unix": created, "files": {"model.safetensors": {"size": 10}}} if complete else None
    )
    return Checkpoint(f"checkpoint-{step:09d}-g{generation:04d}", step, generation, files, manifest)


def run_files(**overrides) -> status.RunFiles:
    values = dict(
        checkpoint_uri="s3://b/run/checkpoints/",
        output_uri="s3://b/run/",
        claims={1: {"label": "AWS Batch job j attempt 1", "started_unix": 1000.0}, 2: {"started_unix": 2000.0}},
        endings={1: {"outcome": "interrupted", "steps_lost": 3, "notice_to_durable_s": 2.5}},
        checkpoints=[checkpoint(300, 2, 2300.0), checkpoint(200, 2, 2100.0), checkpoint(100, 1, 1500.0)],
        trainer_state={"max_steps": 1000, "global_step": 300},
        metrics=None,
    )
    values.update(overrides)
    return status.RunFiles(**values)


def test_a_run_in_progress_shows_progress_rate_eta_and_the_interruption():
    s = status.summarize(run_files(), now_unix=2400.0)
    assert s["state"] == "in progress"
    assert (s["durable_step"], s["planned_steps"], s["percent_done"]) == (300, 1000, 30.0)
    assert s["steps_per_second"] == 0.5  # 100 steps in 200 s, from the newest attempt's checkpoints
    assert s["eta_s"] == 1400  # 700 steps left at 0.5 steps/s
    assert (s["interruptions"], s["steps_lost"]) == (1, 3)
    assert [(a["attempt"], a["outcome"]) for a in s["attempts"]] == [(1, "interrupted"), (2, "running or killed")]
    text = status.render(s)
    assert "300 of 1000 steps durable (30.0%)" in text and "ETA 0:23:20" in text and "1 interruption(s)" in text


def test_a_finished_run_shows_its_metrics_and_no_eta():
    done = {"global_step": 1000, "eval_accuracy": 0.91}
    s = status.summarize(run_files(metrics=done, checkpoints=[checkpoint(1000, 2, 3700.0)]), now_unix=4000.0)
    assert s["state"] == "finished" and s["eta_s"] is None and s["percent_done"] == 100.0
    assert s["attempts"][-1]["outcome"] == "finished"
    assert "eval_accuracy=0.91" in status.render(s)


def test_incomplete_checkpoints_are_listed_and_never_counted_as_durable():
    s = status.summarize(run_files(checkpoints=[checkpoint(400, 2, 0, complete=False), checkpoint(300, 2, 2300.0)]), 0)
    assert s["durable_step"] == 300
    assert "incomplete checkpoint-000000400-g0002 (never loaded)" in status.render(s)


def test_nothing_written_yet_is_not_started():
    empty = run_files(claims={}, endings={}, checkpoints=[], trainer_state=None)
    s = status.summarize(empty, 0)
    assert s["state"] == "not started" and s["durable_step"] is None and s["eta_s"] is None


def finetune_status(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "entrypoint", "status", *args], capture_output=True, text=True, env=env, cwd=REPO,
        timeout=120,
    )  # fmt: skip


def test_status_reads_the_run_from_s3_and_the_training_job(aws_env, bucket, tmp_path):
    """The layout the job writes (attempt claims and endings, checkpoints with manifests, metrics.json),
    made by the job's own code at the moto server, read back by the command as a subprocess."""
    import os

    store = S3Store(f"s3://{bucket}/run/checkpoints/")
    first = attempts.claim_generation(store, "SageMaker training job ft-1")
    for step in (50, 100):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"w" * 100)
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "max_steps": 400}))
        checkpoints.upload_checkpoint(store, UploadRequest(store.uri, 2, folder, step, first, 5, None), {})
    attempts.record_attempt_end(store, first, "interrupted", {"steps_lost": 0, "notice_to_durable_s": 1.5})
    attempts.claim_generation(store, "SageMaker training job ft-1")
    sm = boto3.client("sagemaker", region_name="us-east-1")
    sm.create_training_job(
        TrainingJobName="ft-1",
        AlgorithmSpecification={"TrainingImage": "123456789012.dkr.ecr.us-east-1.amazonaws.com/f:1",
                                "TrainingInputMode": "File"},
        RoleArn="arn:aws:iam::123456789012:role/r",
        OutputDataConfig={"S3OutputPath": f"s3://{bucket}/out"},
        ResourceConfig={"InstanceType": "ml.g5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 50},
        StoppingCondition={"MaxRuntimeInSeconds": 3600},
    )  # fmt: skip
    env = {**os.environ, **aws_env}

    done = finetune_status(f"s3://{bucket}/run/", "--sagemaker-job", "ft-1", "--json", env=env)
    assert done.returncode == 0, done.stderr
    assert "Found credentials" not in done.stderr and "Found endpoint" not in done.stderr  # botocore kept quiet
    s = json.loads(done.stdout)
    assert s["checkpoint_uri"] == f"s3://{bucket}/run/checkpoints/" and s["state"] == "in progress"
    assert (s["durable_step"], s["planned_steps"], s["percent_done"]) == (100, 400, 25.0)
    assert [a["outcome"] for a in s["attempts"]] == ["interrupted", "running or killed"]
    assert s["platform"]["training_job"] == "ft-1" and s["platform"]["status"]

    store_out = S3Store(f"s3://{bucket}/run/")
    store_out.write_bytes("metrics.json", json.dumps({"global_step": 400, "eval_loss": 0.25}).encode())
    done = finetune_status(f"s3://{bucket}/run/checkpoints/", "--output", f"s3://{bucket}/run/", env=env)
    assert done.returncode == 0, done.stderr
    assert "run        finished" in done.stdout and "eval_loss=0.25" in done.stdout

    missing = finetune_status(f"s3://{bucket}/run/", "--batch-job", "no-such-job", env=env)
    assert missing.returncode == 64 and "AWS Batch knows no such job" in missing.stderr
