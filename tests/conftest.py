"""Shared fixtures: a real S3 endpoint (moto server over HTTP on 127.0.0.1).

If TEST_MOTO_ENDPOINT is set (as .ci/run does), the tests use that server; otherwise one is
started for the session. Every test gets its own bucket, so tests never see each other's keys.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=2).read()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.fixture(scope="session")
def moto_server():
    """The URL of a running moto server (IAM managed policies loaded, for Terraform)."""
    existing = os.environ.get("TEST_MOTO_ENDPOINT")
    if existing:
        _wait_http(existing)
        yield existing
        return
    port = _free_port()
    exe = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    env = dict(os.environ, MOTO_IAM_LOAD_MANAGED_POLICIES="true")
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(url)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


AWS_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@pytest.fixture
def aws_env(moto_server, monkeypatch):
    """Environment variables that send every AWS call of this process to the moto server.

    Returns the dict, so subprocess tests can pass it on to the child's environment too.
    """
    env = dict(AWS_TEST_ENV, AWS_ENDPOINT_URL=moto_server)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return env


@pytest.fixture
def bucket(aws_env):
    """A fresh, empty bucket on the moto server."""
    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=name)
    return name


# `make test`, `make test-slow`, `make test-container` and CI set FINETUNE_NO_SKIPS=1: there, a test
# that skips because a tool, package or data set is missing (checkov, hadolint, podman, git, ...)
# fails instead, so a broken install can never pass as green. Skips decided by a `skipif` marker
# about the machine (e.g. "checks the CPU refusal" on a GPU machine) stay skips.
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not (os.environ.get("FINETUNE_NO_SKIPS") == "1" and report.skipped) or hasattr(report, "wasxfail"):
        return
    if any(mark.args and mark.args[0] is True for mark in item.iter_markers("skipif")):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = f"skipped ({reason}), but FINETUNE_NO_SKIPS=1: install what it needs (see docs/testing.md)"
