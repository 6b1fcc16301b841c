"""Many `finetune train` runs from one warm process, for test catalogues of quick failures.

`python -m entrypoint train` spends ~8 s importing the training stack before it looks at its
first setting; forty such runs would take minutes. A `Forker` starts one server process that
imports the stack once, then forks a fresh child per run: the child takes the run's environment
(os.environ replaced), working folder and stdout/stderr files, and calls `entrypoint.__main__.main`
exactly as the command does. Each run is still its own process (its own signal handlers, boto3
session, exit code); only the imports are shared. The server never touches AWS or torch itself,
so the children start clean.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

PRELOAD = (
    "entrypoint.__main__",
    "entrypoint.job.recipe",
    "entrypoint.tasks.classification",
    "transformers.models.bert.modeling_bert",
    "transformers.models.bert.configuration_bert",
    "datasets.packaged_modules.csv.csv",
    "datasets.packaged_modules.json.json",
    "datasets.packaged_modules.parquet.parquet",
    "safetensors.torch",
)


class Forker:
    """The client side: `run(env, cwd)` → (exit code, stdout, stderr, seconds)."""

    def __init__(self, env: dict, cwd: Path):
        self.cwd = cwd
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.forked"],
            env=env,
            cwd=Path(__file__).resolve().parents[2],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        ready = self.proc.stdout.readline()
        assert ready.strip() == "ready", f"the fork server did not start: {ready!r}"
        self.runs = 0

    def run(self, env: dict, cwd: Path, argv: tuple[str, ...] = ("train",), timeout_s: float = 120):
        self.runs += 1
        out, err = cwd / f"run{self.runs}.stdout", cwd / f"run{self.runs}.stderr"
        request = {"env": env, "cwd": str(cwd), "argv": list(argv), "stdout": str(out), "stderr": str(err)}
        request["timeout_s"] = timeout_s
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"the fork server died (rc={self.proc.poll()})"
        answer = json.loads(line)
        return answer["rc"], out.read_text(errors="replace"), err.read_text(errors="replace"), answer["seconds"]

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def _child(request: dict) -> None:
    """In the forked child: become the command, then exit with its code (never return)."""
    rc = 1
    try:
        os.setpgid(0, 0)  # a timeout kills this run's own process group only
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
            handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(handle, fd)
            os.close(handle)
        from entrypoint.__main__ import main

        rc = main(request["argv"], dict(os.environ))
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(int(rc) & 0xFF)


def _wait(pid: int, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return -signal.SIGKILL
        time.sleep(0.01)


def serve() -> None:
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    importlib.import_module("entrypoint.config.settings").settings_class()  # pure: built once for every run
    print("ready", flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        started = time.monotonic()
        pid = os.fork()
        if pid == 0:
            _child(request)
        rc = _wait(pid, request["timeout_s"])
        print(json.dumps({"rc": rc, "seconds": round(time.monotonic() - started, 2)}), flush=True)


if __name__ == "__main__":
    serve()
