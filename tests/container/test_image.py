"""The image built from the Dockerfile runs the job: `finetune train` in a container against a real
S3 endpoint (the moto server on 127.0.0.1, reached through the host network)."""

from __future__ import annotations

import json
import subprocess
import time
import uuid

import pytest

pytestmark = [pytest.mark.container, pytest.mark.slow, pytest.mark.timeout(3600)]  # builds the image first

# One torch thread: with two cores and other work on the machine, more threads are slower.
RUN_ENV = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def env_args(env: dict[str, str]) -> list[str]:
    return [arg for key, value in env.items() for arg in ("--env", f"{key}={value}")]


def test_image_contract(image, run_podman):
    podman = run_podman
    config = json.loads(podman("image", "inspect", image).stdout)[0]["Config"]
    assert config["User"] == "1000:1000"
    assert config["Entrypoint"] == ["/usr/bin/tini", "--", "finetune"]
    assert config["Cmd"] == ["train"]

    probe = (
        "import os, pathlib, entrypoint, torch, transformers; "
        "print(os.getuid(), os.getgid()); "
        "[pathlib.Path(d, 'probe').write_text('x') for d in "
        "('/opt/ml/model', '/opt/ml/checkpoints', '/opt/ml/output', os.environ['HF_HOME'])]"
    )
    result = podman("run", "--rm", "--entrypoint", "python", image, "-c", probe, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1000", "1000"]

    help_text = podman("run", "--rm", image, "--help").stdout
    assert "train" in help_text


def run_train(podman, image: str, env: dict[str, str], timeout_s: float = 600) -> subprocess.CompletedProcess:
    return podman("run", "--rm", "--network", "host", *env_args(env), image, timeout_s=timeout_s, check=False)


def test_train_in_the_container_puts_the_model_in_s3(image, aws_env, bucket, s3_job, run_podman, list_s3):
    started = time.monotonic()
    result = run_train(run_podman, image, {**aws_env, **RUN_ENV, **s3_job})
    took_s = time.monotonic() - started
    assert result.returncode == 0, (
        f"exit {result.returncode} after {took_s:.0f} s\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    )

    prefix = s3_job["FT_OUTPUT_URI"].removeprefix(f"s3://{bucket}/")
    keys = list_s3(bucket, prefix)
    assert {"config.json", "model.safetensors", "metrics.json"} <= keys, keys
    assert "tokenizer.json" in keys or "vocab.txt" in keys, keys

    import boto3

    metrics = json.loads(boto3.client("s3").get_object(Bucket=bucket, Key=prefix + "metrics.json")["Body"].read())
    assert metrics["global_step"] == int(s3_job["FT_MAX_STEPS"])


@pytest.mark.parametrize("init", [False, True], ids=["tini", "tini-under-run-init"])
def test_sigterm_reaches_the_job_through_tini(init, image, aws_env, bucket, s3_job, run_podman, list_s3):
    """`docker stop` (as on a spot interruption) makes the job checkpoint to S3 and exit 143,
    also when `docker run --init` puts another init in front of tini."""
    podman = run_podman
    env = {**aws_env, **RUN_ENV, **s3_job, "FT_MAX_STEPS": "100000", "FT_SAVE_STEPS": "100000"}
    name = f"finetune-sigterm-{uuid.uuid4().hex[:8]}"
    podman("run", "--detach", *(["--init"] if init else []), "--name", name, "--network", "host", *env_args(env), image)
    try:
        # Stop once training runs (the job logs its steps), not while it is still starting.
        deadline = time.monotonic() + 300
        while "[metrics] step=" not in podman("logs", name, check=False).stdout:
            assert podman("inspect", "--format", "{{.State.Running}}", name).stdout.strip() == "true", podman(
                "logs", name, check=False
            ).stderr[-4000:]
            assert time.monotonic() < deadline, "the job logged no training step in 300 s"
            time.sleep(1)
        podman("stop", "--time", "120", name, timeout_s=180)
        exit_code = int(podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout)
        logs = podman("logs", name, check=False)
        assert exit_code == 143, f"exit {exit_code}\n{logs.stderr[-4000:]}"
    finally:
        podman("rm", "--force", name, check=False)

    checkpoints = list_s3(bucket, s3_job["FT_CHECKPOINT_URI"].removeprefix(f"s3://{bucket}/"))
    assert any("model.safetensors" in key for key in checkpoints), checkpoints
