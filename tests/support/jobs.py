"""Running the `finetune` command as a subprocess, as users and platforms do."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3

BASE_ENV = {
    "OMP_NUM_THREADS": "1",  # bitwise-reproducible CPU runs need the same thread count
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONUNBUFFERED": "1",
}


def child_env(aws_env: dict, **settings: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FT_", "AWS_"))}
    env.update(BASE_ENV, **aws_env)
    env.update({f"FT_{k.upper()}": str(v) for k, v in settings.items()})
    return env


def finetune_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "entrypoint", *args]


class Job:
    """A running `finetune train`, with its output collected line by line."""

    def __init__(self, env: dict, cwd: Path, *args: str):
        self.proc = subprocess.Popen(
            finetune_cmd(*(args or ("train",))),
            env=env,
            cwd=cwd,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._threads = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr), daemon=True),
        ]
        for t in self._threads:
            t.start()

    @staticmethod
    def _pump(stream, sink):
        for line in stream:
            sink.append(line)

    def wait_for(self, text: str, timeout_s: float = 120) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in self.stdout + self.stderr:
                if text in line:
                    return line
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"{text!r} never appeared; rc={self.proc.poll()}\n{self.output()[-4000:]}")

    def signal(self, signum=signal.SIGTERM) -> None:
        self.proc.send_signal(signum)

    def finish(self, timeout_s: float = 300) -> int:
        try:
            rc = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # never leave a job running behind a failed test
            self.proc.wait(30)
            raise
        for t in self._threads:
            t.join(5)
        return rc

    def output(self) -> str:
        return "".join(self.stdout) + "".join(self.stderr)


def run(env: dict, cwd: Path, *args: str, timeout_s: float = 300) -> tuple[int, str]:
    job = Job(env, cwd, *args)
    rc = job.finish(timeout_s)
    return rc, job.output()


def upload_folder(folder: Path, bucket: str, prefix: str) -> str:
    s3 = boto3.client("s3")
    for path in folder.rglob("*"):
        if path.is_file():
            s3.upload_file(str(path), bucket, f"{prefix}{path.relative_to(folder).as_posix()}")
    return f"s3://{bucket}/{prefix}"


def s3_keys(bucket: str, prefix: str) -> dict[str, int]:
    s3 = boto3.client("s3")
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        out.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
    return out


def s3_bytes(bucket: str, key: str) -> bytes:
    return boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()


def load_safetensors(data: bytes) -> dict:
    from safetensors.torch import load

    return load(data)


def stop_and_resume(env: dict, cwd: Path, after: str = "[metrics] step=30 ") -> tuple[int, str]:
    """Run the job, SIGTERM it once `after` is printed (it must exit 143 with a checkpoint), then
    run it again to the end (it must exit 0); returns (the step it stopped at, the rerun's output)."""
    job = Job(env, cwd)
    job.wait_for(after)
    job.signal(signal.SIGTERM)
    assert job.finish() == 143, job.output()[-3000:]
    line = job.wait_for("saving a checkpoint at step")
    stopped = int(line.rsplit("step ", 1)[1].split(",")[0])
    rc, out = run(env, cwd)
    assert rc == 0, out[-3000:]
    assert f"(step {stopped})" in out, "the rerun did not resume from the stop checkpoint"
    return stopped, out
