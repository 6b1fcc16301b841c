"""The upload process: checkpoint uploads (sha256 of every file, boto3's transfer threads) run in
a Python process of their own, so that they never hold the training process's GIL.

It is started (spawn: no copy of the training process's memory or threads) by the main thread,
takes one upload at a time over a pipe, and answers with checkpoints.Uploaded or the error. It
ignores SIGINT (a Ctrl-C reaches the whole process group; the job decides how to stop) and dies
with the job on Linux (PR_SET_PDEATHSIG), so a `kill -9` of the job leaves no uploader behind.
If it dies, CheckpointSync uploads from its own thread instead. An upload that outlives its
deadline (a stalled S3), or is still in flight when the job ends, is not waited for: the process
is stopped.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from typing import TYPE_CHECKING

from entrypoint.errors import FinetuneError, WorldError

if TYPE_CHECKING:  # the upload process imports boto3 only after it is tied to the job (serve)
    from entrypoint.durability.checkpoints import Uploaded, UploadRequest

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
POLL_S = 0.5  # how often a waiting upload looks at its deadline and at close()


class UploadProcess:
    """The job's side of the pipe."""

    def __init__(self, process, conn):
        self.process = process
        self._conn = conn
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self.alive = True

    def upload(self, request: UploadRequest, timeout_s: float | None = None) -> Uploaded | None:
        """checkpoints.Uploaded from the upload process, its exception raised here, or None when
        the process is gone (the caller uploads itself). An upload still unanswered after
        `timeout_s` (a stalled S3), or when close() is called, stops the process: WorldError."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._lock:
            if not self.alive:
                return None
            try:
                self._conn.send(request)
                while not self._conn.poll(POLL_S):
                    if self._closing.is_set():
                        self._stop()
                        raise WorldError(f"the upload of checkpoint {request.step} was abandoned: the job is ending")
                    if deadline is not None and time.monotonic() > deadline:
                        self._stop()
                        raise WorldError(
                            f"the upload of checkpoint {request.step} to {request.uri} did not finish within "
                            f"{timeout_s:.0f} s (FT_UPLOAD_TIMEOUT_SECONDS): S3 stalled? The upload process was stopped"
                        )
                kind, value = self._conn.recv()
            except (EOFError, OSError):
                self.alive = False
                self.process.join(5)
                if self._closing.is_set():
                    raise WorldError(
                        f"the upload of checkpoint {request.step} was abandoned: the job is ending"
                    ) from None
                log.warning(
                    "the upload process exited (code %s); uploads continue from the training process",
                    self.process.exitcode,
                )
                return None
        if kind == "failed":
            raise WorldError(value)
        return value

    def _stop(self) -> None:
        """End the process whatever it is doing (a hung upload holds no lock the job needs)."""
        self.alive = False
        self.process.kill()
        self.process.join(10)
        self._conn.close()

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the process: at once when an upload is still in flight (the caller gave up on it),
        else after it has read the end of the pipe. Never waits longer than about `timeout_s`."""
        self._closing.set()
        if not self._lock.acquire(timeout=timeout_s):
            return  # the upload in flight sees _closing within POLL_S and stops the process itself
        try:
            if self.alive:
                self.alive = False
                self._conn.close()
                self.process.join(timeout_s)
                if self.process.is_alive():
                    self.process.kill()
                    self.process.join(timeout_s)
        finally:
            self._lock.release()


def start() -> UploadProcess:
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    level = logging.getLogger().getEffectiveLevel()
    process = ctx.Process(target=serve, args=(theirs, os.getpid(), level), name="finetune-upload", daemon=True)
    process.start()
    theirs.close()
    return UploadProcess(process, ours)


def die_with_parent(parent_pid: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the job died before prctl took effect
        os._exit(0)


def serve(conn, parent_pid: int, level: int) -> None:
    """The upload process's loop: one request at a time until the job closes the pipe."""
    die_with_parent(parent_pid)
    from entrypoint.config import platform as runtime
    from entrypoint.config import sensitive
    from entrypoint.durability import checkpoints
    from entrypoint.io import aws, storage

    logging.basicConfig(level=level, stream=sys.stderr, format=runtime.log_format(os.environ))
    aws.quiet_loggers()  # at FT_LOG_LEVEL=DEBUG botocore would log the session token with each request
    sensitive.install_log_scrubber(os.environ)  # the job's environment, FT_SECRETS' values included
    stores: dict[tuple[str, int], tuple[storage.Store, dict]] = {}
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return
        key = (request.uri, request.concurrency)
        store, manifests = stores.setdefault(key, (storage.open_store(request.uri, request.concurrency), {}))
        try:
            reply = ("ok", checkpoints.upload_checkpoint(store, request, manifests))
        except FinetuneError as exc:  # the world's trouble (S3 unreachable, access denied): its message says it
            reply = ("failed", str(exc))
        except Exception:
            reply = ("failed", f"unexpected error in the upload process:\n{traceback.format_exc()}")
        conn.send(reply)
