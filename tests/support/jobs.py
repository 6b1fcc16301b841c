"""Running the `finetune` command as a subprocess, as users and platforms do."""

from __future__ import annotations

import codecs
import contextlib
import fcntl
import io
import os
import re
import signal
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable
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


def wait_until(condition: Callable[[], object], what: str, timeout_s: float = 60, poll_s: float = 0.02):
    """Poll `condition` until it returns something true (returned), or fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(poll_s)
    return value


def process_status(pid: int) -> dict[str, str]:
    """/proc/PID/status as a dict ({} once the process is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return {}
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def signal_pending(pid: int, signum: int) -> bool:
    status = process_status(pid)
    mask = int(status.get("SigPnd", "0"), 16) | int(status.get("ShdPnd", "0"), 16)
    return bool(mask & (1 << (signum - 1)))


SIGTERM = signal.SIGTERM  # in Job's body, `signal` is its method
STEP_LINE = re.compile(r"\[metrics\] step=(\d+) ")
STOP_LINE = re.compile(r"stop requested \(.*\): saving a checkpoint at step (\d+),")


class Job:
    """A running `finetune train`, with its output collected line by line."""

    def __init__(self, env: dict, cwd: Path, *args: str):
        self.proc = subprocess.Popen(
            finetune_cmd(*(args or ("train",))), env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._partial = {"stdout": "", "stderr": ""}  # the end of a line not written out yet
        self._lock = threading.Lock()
        self._pause_on: tuple[str, list[int]] | None = None  # (text, pids): SIGSTOP them when a line has it
        self._paused = threading.Event()
        self.pause_latency_s: float | None = None  # from reading that line to SIGSTOP sent; None: already there
        self.step_lines: list[tuple[float, int]] = []  # (time.monotonic() when read, step) of each step line
        self._threads = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout, "stdout"), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr, "stderr"), daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _pump(self, stream, sink: list[str], name: str) -> None:
        """Lines as text mode reads them (\\r and \\r\\n become \\n), and the partial last line kept
        visible: a process stopped between the writes of one print has written half a line."""
        decoder = io.IncrementalNewlineDecoder(codecs.getincrementaldecoder("utf-8")(errors="replace"), True)
        fd, partial = stream.fileno(), ""
        while chunk := os.read(fd, 1 << 16):
            read_at = time.monotonic()
            *lines, partial = (partial + decoder.decode(chunk)).split("\n")
            for line in lines:
                sink.append(line + "\n")
                self._saw(line, read_at)
            self._partial[name] = partial
        partial += decoder.decode(b"", final=True)
        if partial:
            sink.append(partial)
        self._partial[name] = ""

    def _saw(self, line: str, read_at: float) -> None:
        if found := STEP_LINE.search(line):
            self.step_lines.append((read_at, int(found.group(1))))
        with self._lock:
            if self._pause_on and self._pause_on[0] in line:
                self._stop(self._pause_on[1])
                self.pause_latency_s = time.monotonic() - read_at

    def _stop(self, pids: list[int]) -> None:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        self._pause_on = None
        self._paused.set()

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

    def training_pids(self, processes: int = 1) -> list[int]:
        """The processes that train: this one, or with several the launcher's `processes` workers."""
        if processes == 1:
            return [self.proc.pid]
        import psutil

        def workers():
            found = [p.pid for p in psutil.Process(self.proc.pid).children() if "entrypoint" in p.cmdline()]
            return found if len(found) == processes else None

        return wait_until(workers, f"{processes} training processes")

    def pause_at(self, text: str, pids: list[int], timeout_s: float = 120) -> None:
        """SIGSTOP `pids` the moment a line with `text` is read (at once if one was already read);
        returns once the kernel reports every one stopped."""
        with self._lock:
            self._paused.clear()
            if text in self.output():
                self._stop(pids)
                self.pause_latency_s = None
            else:
                self._pause_on = (text, pids)
        if not self._paused.wait(timeout_s):
            with self._lock:
                self._pause_on = None
            raise AssertionError(f"{text!r} never appeared; rc={self.proc.poll()}\n{self.output()[-4000:]}")
        wait_until(lambda: all(process_status(pid).get("State", "T")[0] in "Tt" for pid in pids), "SIGSTOP", 10)

    def resume(self, pids: list[int]) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def quiet_output(self) -> str:
        """The output of a paused job once its pipes are drained, a partly written last line included."""
        last = [None]

        def drained():
            unread = sum(
                int.from_bytes(fcntl.ioctl(s.fileno(), termios.FIONREAD, b"\0\0\0\0"), sys.byteorder)
                for s in (self.proc.stdout, self.proc.stderr)
            )
            now = (len(self.stdout), len(self.stderr), *self._partial.values())
            settled, last[0] = unread == 0 and now == last[0], now
            return settled

        wait_until(drained, "the paused job's output to drain", 10, poll_s=0.05)
        return self.output() + "".join(self._partial.values())

    def signal_between_steps(self, after: str, signum: int = SIGTERM, processes: int = 1) -> set[int]:
        """Pause the training processes of a job that logs every step (FT_LOGGING_STEPS=1) as soon
        as it prints `after`, send `signum` (with several processes, to the launcher, which forwards
        it: it is then pending in every worker), and let them go on. Returns the steps at which the
        stop may land: the step after the last one logged, L + 1, the one under way.

        Also L + 2 when the pause came late: the stop callback runs at the end of a step, just
        before that step's line is printed, so a process paused in between has logged L but is
        past step L + 1's boundary. The pause comes within a fraction of a millisecond of the line
        being printed; only if it took half a step or more (a loaded machine) is L + 2 allowed."""
        pids = self.training_pids(processes)
        self.pause_at(after, pids)
        try:
            steps = STEP_LINE.findall(self.quiet_output())
            assert steps, "the job had logged no step yet"
            logged = int(steps[-1])
            self.signal(signum)
            if processes > 1:
                wait_until(lambda: all(signal_pending(pid, signum) for pid in pids), "the forwarded signal", 10)
        finally:
            self.resume(pids)
        pairs = zip(self.step_lines, self.step_lines[1:], strict=False)
        shortest = min((b[0] - a[0] for a, b in pairs if b[1] == a[1] + 1), default=0.0)  # one step apart
        on_time = self.pause_latency_s is not None and self.pause_latency_s < shortest / 2
        return {logged + 1} if on_time else {logged + 1, logged + 2}

    def stop_step(self) -> int:
        """The step at which the stop callback said it saves a checkpoint and stops."""
        return int(STOP_LINE.search(self.wait_for("saving a checkpoint at step")).group(1))

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


# Settings for a job that is stopped by a signal: every step logged (signal_between_steps reads the
# step the signal came at) and no scheduled save before the end, so that a checkpoint in between can
# only be the stop's own.
STOPPABLE = {"logging_steps": "1", "save_steps": "100000"}


def complete_steps(env: dict) -> list[int]:
    """The steps of the complete checkpoints at the job's checkpoint location, newest first."""
    from entrypoint.durability import checkpoints
    from entrypoint.io import storage

    uri = env.get("FT_CHECKPOINT_URI") or env["FT_OUTPUT_URI"].rstrip("/") + "/checkpoints/"
    return [c.step for c in checkpoints.scan(storage.open_store(uri)) if c.complete]


def stop_and_resume(env: dict, cwd: Path, after: str = "[metrics] step=30 ") -> tuple[int, str]:
    """Run the job (with STOPPABLE settings), SIGTERM it once `after` is printed: it must save a
    checkpoint at the next step boundary and exit 143. Then run it again to the end (it must exit
    0, resumed from that checkpoint); returns (the step it stopped at, the rerun's output)."""
    assert {f"FT_{k.upper()}": v for k, v in STOPPABLE.items()}.items() <= env.items(), "use STOPPABLE settings"
    job = Job(env, cwd)
    allowed = job.signal_between_steps(after)
    assert job.finish() == 143, job.output()[-3000:]
    stopped = job.stop_step()
    assert stopped in allowed, f"the stop landed at step {stopped}, not at the next step boundary {sorted(allowed)}"
    assert complete_steps(env) == [stopped], "the one checkpoint must be the stop's"
    rc, out = run(env, cwd)
    assert rc == 0, out[-3000:]
    assert f"(step {stopped})" in out, "the rerun did not resume from the stop checkpoint"
    return stopped, out
