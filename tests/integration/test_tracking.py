"""Experiment tracking across a SIGTERM and a resume: one run, one continuous history.

MLflow against a real tracking server (SQLite backend, artifacts in the moto S3 bucket); wandb
in offline mode. Both run `finetune train` as a subprocess, stop it with SIGTERM and resume it.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.integration.conftest import settings
from tests.support import jobs

pytestmark = pytest.mark.integration

MAX_STEPS = 40


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(url: str) -> bool:
    try:
        return urllib.request.urlopen(url + "/health", timeout=2).read() == b"OK"
    except OSError:
        return False


@pytest.fixture
def mlflow_server(aws_env, moto_server, bucket, tmp_path):
    """A real MLflow tracking server: runs in SQLite, artifacts in the moto bucket (proxied)."""
    pytest.importorskip("mlflow")
    port = free_port()
    env = dict(
        os.environ,
        **aws_env,
        MLFLOW_S3_ENDPOINT_URL=moto_server,
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",  # no background job workers: faster start, fewer processes
    )
    log = open(tmp_path / "mlflow-server.log", "wb")  # noqa: SIM115 - closed below
    # mlflow server (uvicorn) starts workers of its own: a session of its own lets teardown end them all.
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'mlflow.db'}",
            "--artifacts-destination",
            f"s3://{bucket}/mlflow-artifacts",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        jobs.wait_until(lambda: healthy(url) or proc.poll() is not None, "the MLflow server", timeout_s=240, poll_s=1)
        assert proc.poll() is None, (tmp_path / "mlflow-server.log").read_text()[-3000:]
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_mlflow_keeps_one_run_with_one_loss_history_across_sigterm_and_resume(
    aws_env, bucket, job_inputs, tmp_path, mlflow_server
):
    from mlflow.tracking import MlflowClient

    run_settings = dict(
        settings(job_inputs, bucket, "mlflow", tmp_path), **jobs.STOPPABLE, report_to="mlflow", max_steps=MAX_STEPS
    )
    env = jobs.child_env(aws_env, **run_settings)
    env.update(MLFLOW_TRACKING_URI=mlflow_server, MLFLOW_EXPERIMENT_NAME="finetune-resume")
    stopped, out = jobs.stop_and_resume(env, tmp_path, after="[metrics] step=12 ")
    assert "mlflow: continuing run" in out, out[-3000:]

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("finetune-resume")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1, [(r.info.run_id, sorted(r.data.metrics)) for r in runs]  # ONE run for both attempts
    [run] = runs
    record = json.loads(jobs.s3_bytes(bucket, "runs/mlflow/checkpoints/_tracking/mlflow.json"))
    assert record == {
        "run_id": run.info.run_id,
        "destination": {"MLFLOW_TRACKING_URI": mlflow_server, "MLFLOW_EXPERIMENT_NAME": "finetune-resume"},
    }
    assert run.info.status == "FINISHED"

    history = sorted(client.get_metric_history(run.info.run_id, "loss"), key=lambda m: m.timestamp)
    steps = [m.step for m in history]
    # Every step logged once, in order: the first attempt's 1..stopped, the second's stopped+1..40.
    # The stop checkpoint is taken at the step where the stop landed, so nothing is trained twice.
    assert steps == list(range(1, MAX_STEPS + 1)), steps
    assert 12 < stopped < MAX_STEPS
    [first_end, last_end] = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train_loss"))
    assert (first_end, last_end) == (stopped, MAX_STEPS)  # each attempt's end-of-training summary
    assert run.data.metrics["eval_accuracy"] is not None  # the evaluation after training: same run


@pytest.mark.slow  # a stop and resume of its own; tests/unit/test_tracking.py covers the decisions
def test_wandb_offline_attempts_log_to_one_run(aws_env, bucket, job_inputs, tmp_path):
    pytest.importorskip("wandb")
    run_settings = dict(
        settings(job_inputs, bucket, "wandb", tmp_path), **jobs.STOPPABLE, report_to="wandb", max_steps=MAX_STEPS
    )
    env = jobs.child_env(aws_env, **run_settings)
    (tmp_path / "wandb").mkdir()
    env.update(WANDB_MODE="offline", WANDB_DIR=str(tmp_path / "wandb"), WANDB_PROJECT="finetune-test")
    stopped, out = jobs.stop_and_resume(env, tmp_path, after="[metrics] step=12 ")
    assert "wandb: continuing run" in out, out[-3000:]

    record = json.loads(jobs.s3_bytes(bucket, "runs/wandb/checkpoints/_tracking/wandb.json"))
    assert record["destination"] == {"WANDB_PROJECT": "finetune-test"}
    folders = sorted((tmp_path / "wandb" / "wandb").glob("offline-run-*"))
    # One folder per attempt, both for the recorded run: `wandb sync` uploads them in order into it.
    assert [f.name.rsplit("-", 1)[1] for f in folders] == [record["run_id"]] * 2, folders
    logged = [[row["train/global_step"] for row in offline_history(f) if "train/loss" in row] for f in folders]
    assert logged == [list(range(1, stopped + 1)), list(range(stopped + 1, MAX_STEPS + 1))]


def offline_history(folder: Path) -> list[dict]:
    """The history rows of an offline wandb run: its run-ID.wandb file is a LevelDB-style log (a 7-byte
    header, then 32 KiB blocks of records: crc32, length, type) of wandb's Record protobufs."""
    from wandb.proto import wandb_internal_pb2

    [path] = folder.glob("run-*.wandb")
    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B", path
    pos, chunk, rows = 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # too little room left for a record header: padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        chunk += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last part of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            chunk = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
    return rows
