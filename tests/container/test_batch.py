"""One AWS Batch job, end to end: `finetune submit batch` to a moto server that runs the job's
container through podman's Docker-API socket; the container trains and writes its model to S3.

Two moto servers: the shared one (tests/conftest.py) holds S3, and the job's container reaches it
on 127.0.0.1 because moto is told to start job containers in the host's network
(MOTO_DOCKER_NETWORK_MODE=host). A second one, started here with DOCKER_HOST pointing at the
podman socket, is the Batch control plane; moto's Batch runs containers with the docker SDK.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytestmark = [pytest.mark.container, pytest.mark.slow, pytest.mark.timeout(3600)]  # builds the image first

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(ready, what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        assert time.monotonic() < deadline, f"{what} not ready after {timeout_s:.0f} s"
        time.sleep(0.2)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def podman_socket(podman_ready, tmp_path):
    """A Docker-API socket served by `podman system service` (for this test only)."""
    path = tmp_path / "podman.sock"
    proc = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{path}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(path.exists, "podman system service")
        yield f"unix://{path}"
    finally:
        stop(proc)


@pytest.fixture
def batch_endpoint(podman_socket, tmp_path):
    """A moto server whose Batch jobs run as containers on the podman socket."""
    pytest.importorskip("docker", reason="moto's Batch needs the docker SDK (pip install docker)")
    port = free_port()
    exe = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    env = dict(os.environ, DOCKER_HOST=podman_socket, MOTO_DOCKER_NETWORK_MODE="host")
    log = (tmp_path / "moto-batch.log").open("w")
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    try:
        wait_for(answers, "moto server for Batch")
        yield url
    finally:
        stop(proc)
        log.close()


@pytest.fixture
def batch_queue(aws_env, batch_endpoint, image):
    """A queue and a job definition running `image`; AWS settings point the job at the S3 server."""
    import boto3

    suffix = uuid.uuid4().hex[:8]
    iam = boto3.client("iam", endpoint_url=batch_endpoint)
    batch = boto3.client("batch", endpoint_url=batch_endpoint)
    role = iam.create_role(RoleName=f"batch-service-{suffix}", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    environment = batch.create_compute_environment(
        computeEnvironmentName=f"finetune-{suffix}", type="UNMANAGED", state="ENABLED", serviceRole=role
    )
    queue = f"finetune-{suffix}"
    batch.create_job_queue(
        jobQueueName=queue,
        state="ENABLED",
        priority=1,
        computeEnvironmentOrder=[{"order": 1, "computeEnvironment": environment["computeEnvironmentArn"]}],
    )
    # The job container gets the test credentials and the S3 endpoint the way a real definition
    # gets a role: from the definition, not the submitter.
    job_env = {**aws_env, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    definition = f"finetune-{suffix}"
    batch.register_job_definition(
        jobDefinitionName=definition,
        type="container",
        containerProperties={
            "image": image,
            "command": ["train"],
            "environment": [{"name": k, "value": v} for k, v in job_env.items()],
            "resourceRequirements": [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "2048"}],
        },
    )
    return queue, definition


def test_batch_job_runs_the_image_and_writes_the_model_to_s3(
    aws_env, batch_endpoint, batch_queue, bucket, s3_job, list_s3
):
    queue, definition = batch_queue
    settings = [arg for key, value in s3_job.items() for arg in ("--set", f"{key}={value}")]
    # The submitter talks to the Batch server; S3 stays on the shared one (AWS_ENDPOINT_URL).
    env = {**os.environ, **aws_env, "AWS_ENDPOINT_URL_BATCH": batch_endpoint, "HF_HUB_OFFLINE": "1"}
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "entrypoint",
            "submit",
            "batch",
            "--job-queue",
            queue,
            "--job-definition",
            definition,
            "--job-name",
            "container-smoke",
            *settings,
            "--wait",
            "--poll-seconds",
            "1",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    took_s = time.monotonic() - started

    import boto3

    job_id = result.stdout.strip()
    logs = ""
    if job_id:
        job = boto3.client("batch", endpoint_url=batch_endpoint).describe_jobs(jobs=[job_id])["jobs"][0]
        stream = job.get("container", {}).get("logStreamName")
        if stream:
            events = boto3.client("logs", endpoint_url=batch_endpoint).get_log_events(
                logGroupName="/aws/batch/job", logStreamName=stream
            )["events"]
            logs = "\n".join(e["message"] for e in events)
    assert result.returncode == 0, f"after {took_s:.0f} s: {result.stderr[-3000:]}\njob log:\n{logs[-6000:]}"
    assert f"{job_id}: SUCCEEDED" in result.stderr

    prefix = s3_job["FT_OUTPUT_URI"].removeprefix(f"s3://{bucket}/")
    keys = list_s3(bucket, prefix)
    assert {"config.json", "model.safetensors", "metrics.json"} <= keys, f"{keys}\njob log:\n{logs[-6000:]}"
    assert "[metrics] step=" in logs, "the job's own output reached the Batch log stream"
