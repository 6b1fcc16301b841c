"""The upload process: checkpoint uploads (sha256 of every file, boto3's transfer threads) run in
a Python process of their own, so that they never hold the training process's GIL.

It is started (spawn: no copy of the training process's memory or threads) by the main thread,
takes one upload at a time over a pipe, and answers with checkpoints.Uploaded or the error. It
ignores SIGINT (a Ctrl-C reaches the whole process group; the job decides how to stop) and dies
with the job on Linux (PR_SET_PDEATHSIG), so a `kill -9` of the job leaves no uploader behind.
If it dies, CheckpointSync uploads from its own thread instead.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
import traceback
from typing import TYPE_CHECKING

from entrypoint.errors import FinetuneError, WorldError

if TYPE_CHECKING:  # the upload process imports boto3 only after it is tied to the job (serve)
    from entrypoint.durability.checkpoints import Uploaded, UploadRequest

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1


class UploadProcess:
    """The job's side of the pipe."""

    def __init__(self, process, conn):
        self.process = process
        self._conn = conn
        self._lock = threading.Lock()
        self.alive = True

    def upload(self, request: UploadRequest) -> Uploaded | None:
        """checkpoints.Uploaded from the upload process, its exception raised here, or None when
        the process is gone (the caller uploads itself)."""
        with self._lock:
            if not self.alive:
                return None
            try:
                self._conn.send(request)
                kind, value = self._conn.recv()
            except (EOFError, OSError):
                self.alive = False
                self.process.join(5)
                log.warning(
                    "the upload process exited (code %s); uploads continue from the training process",
                    self.process.exitcode,
                )
                return None
        if kind == "failed":
            raise WorldError(value)
        return value

    def close(self) -> None:
        with self._lock:
            if self.alive:
                self.alive = False
                self._conn.close()
                self.process.join(10)


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
    from entrypoint.durability import checkpoints
    from entrypoint.io import storage

    logging.basicConfig(level=level, stream=sys.stderr, format=runtime.log_format(os.environ))
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
