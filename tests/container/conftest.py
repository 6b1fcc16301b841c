"""Fixtures for the container tests: the image built with podman on a debootstrapped base, and a
tiny model plus data in S3 (the moto server of tests/conftest.py).

The image tests need root, podman configured by scripts/container/setup-podman.sh and the Debian
mirror (for the base image and apt) plus PyPI (for pip inside the build). Environment:
  FINETUNE_TEST_IMAGE             test this already-built image instead of building one
  FINETUNE_TEST_BASE_IMAGE        base image (default: localhost/finetune-base:bookworm, built here)
  FINETUNE_TEST_TORCH             torch requirement (default: torch==2.13.0, a CPU wheel on disk)
  FINETUNE_TEST_TORCH_INDEX_URL   take torch from this index instead of the local wheel
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.support import tiny

REPO = Path(__file__).resolve().parents[2]
BASE_IMAGE = os.environ.get("FINETUNE_TEST_BASE_IMAGE", "localhost/finetune-base:bookworm")
TEST_IMAGE = "localhost/finetune:test"
TORCH_REQUIREMENT = os.environ.get("FINETUNE_TEST_TORCH", "torch==2.13.0")
TORCH_INDEX_URL = os.environ.get("FINETUNE_TEST_TORCH_INDEX_URL", "")
# The CAs this machine trusts (a TLS-inspecting proxy's among them), lent to pip during the build.
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")

POSITIVE = [
    "a delight from start to finish",
    "warm funny and moving",
    "the best film this year",
    "a great cast and a clever story",
    "i loved every minute",
    "beautifully made and acted",
]
NEGATIVE = [
    "a dull and tedious mess",
    "boring from the first scene",
    "the worst film this year",
    "a weak cast and a silly story",
    "i hated every minute",
    "badly made and badly acted",
]


def podman(*args: str, timeout_s: float = 900, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout_s, check=check)


@pytest.fixture(scope="session")
def podman_ready() -> None:
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (scripts/container/setup-podman.sh installs it)")
    if os.geteuid() != 0:
        pytest.skip("the container tests run podman as root, as configured by setup-podman.sh")


@pytest.fixture(scope="session")
def image(podman_ready, tmp_path_factory) -> str:
    """The project's image, built from the Dockerfile with a CPU torch wheel (~2 min uncached)."""
    prebuilt = os.environ.get("FINETUNE_TEST_IMAGE")
    if prebuilt:
        return prebuilt
    base = build_base_image()
    cmd = [
        "build",
        "--format",
        "docker",
        "--tag",
        TEST_IMAGE,
        "--build-arg",
        f"BASE_IMAGE={base}",
        "--build-arg",
        f"TORCH_REQUIREMENT={TORCH_REQUIREMENT}",
    ]
    if TORCH_INDEX_URL:
        cmd += ["--build-arg", f"TORCH_INDEX_URL={TORCH_INDEX_URL}"]
    else:
        # pip on the build machines finds the CPU wheel in a find-links directory: hand the same
        # file to the build. (Elsewhere this would fetch PyPI's multi-GB CUDA build: set
        # FINETUNE_TEST_TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu instead.)
        wheels = tmp_path_factory.mktemp("wheels")
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", str(wheels), TORCH_REQUIREMENT],
            check=True,
            timeout=600,
        )
        cmd += ["--build-arg", "TORCH_FIND_LINKS=/wheels", "--volume", f"{wheels}:/wheels:ro"]
    if HOST_CA_BUNDLE.is_file():
        cmd += ["--volume", f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro"]
    result = podman(*cmd, str(REPO), check=False)
    assert result.returncode == 0, f"podman build failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return TEST_IMAGE


def build_base_image() -> str:
    """The debootstrapped Debian base; the script does nothing when it exists (else ~40 s)."""
    subprocess.run(
        [str(REPO / "scripts" / "container" / "build-base-image.sh"), BASE_IMAGE],
        check=True,
        timeout=900,
        capture_output=True,
    )
    return BASE_IMAGE


def rows(count: int) -> list[dict]:
    out = []
    for i in range(count):
        label = i % 2
        text = (POSITIVE if label else NEGATIVE)[(i // 2) % len(POSITIVE)]
        out.append({"text": text, "label": label})
    return out


def write_csv(path: Path, records: list[dict]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(records)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer BERT (hidden size 32) with a WordPiece tokenizer trained on the test sentences.

    Built once per session: the WordPiece trainer is not deterministic between builds.
    """
    return tiny.build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), POSITIVE + NEGATIVE)


@pytest.fixture
def s3_job(bucket, tiny_model_dir, tmp_path) -> dict[str, str]:
    """The tiny model and a train/eval csv in the test's bucket; FT_* settings for a short run."""
    import boto3

    s3 = boto3.client("s3")
    for path in tiny_model_dir.iterdir():
        s3.upload_file(str(path), bucket, f"models/tiny/{path.name}")
    s3.upload_file(str(write_csv(tmp_path / "train.csv", rows(32))), bucket, "data/train.csv")
    s3.upload_file(str(write_csv(tmp_path / "eval.csv", rows(8))), bucket, "data/eval.csv")
    run = uuid.uuid4().hex[:8]
    return {
        "FT_MODEL": f"s3://{bucket}/models/tiny/",
        "FT_TASK": "sequence-classification",
        "FT_TRAIN_DATA": f"s3://{bucket}/data/train.csv",
        "FT_EVAL_DATA": f"s3://{bucket}/data/eval.csv",
        "FT_OUTPUT_URI": f"s3://{bucket}/runs/{run}/output/",
        "FT_CHECKPOINT_URI": f"s3://{bucket}/runs/{run}/checkpoints/",
        "FT_MAX_STEPS": "4",
        "FT_SAVE_STEPS": "2",
        "FT_PER_DEVICE_TRAIN_BATCH_SIZE": "8",
        "FT_LOGGING_STEPS": "1",
        "FT_SEED": "1",
    }


def s3_keys(bucket: str, prefix: str) -> set[str]:
    import boto3

    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {obj["Key"][len(prefix) :] for page in pages for obj in page.get("Contents", [])}


@pytest.fixture
def run_podman():
    """`podman` as a function, for the tests: run_podman("inspect", ...) -> CompletedProcess."""
    return podman


@pytest.fixture
def list_s3(aws_env):
    """list_s3(bucket, prefix) -> the keys under prefix, relative to it."""
    return s3_keys
