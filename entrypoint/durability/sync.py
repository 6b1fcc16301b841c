"""Checkpoint uploads in the background: training never waits for them until `wait()`."""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import shutil
import threading
import time
from pathlib import Path

from entrypoint.durability.checkpoints import UploadRequest, upload_checkpoint
from entrypoint.durability.manifests import local_name, store_name
from entrypoint.errors import FinetuneError, WorldError
from entrypoint.io import storage

log = logging.getLogger(__name__)


def snapshot(folder: Path, dest: Path) -> None:
    """Hard links of `folder`'s files at `dest` (a copy where links are impossible): the Trainer
    may delete or rewrite its own folder (save_total_limit) while the upload is in progress."""
    shutil.rmtree(dest, ignore_errors=True)
    try:
        shutil.copytree(folder, dest, copy_function=os.link)
    except OSError:
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(folder, dest)


@dataclasses.dataclass
class SyncStats:
    uploads: int = 0
    failures: int = 0
    bytes: int = 0
    seconds: float = 0.0
    durable_step: int | None = None
    durable_at: float | None = None  # time.monotonic() when durable_step became durable

    @property
    def mb_per_s(self) -> float | None:
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else None


class CheckpointSync:
    """Uploads checkpoints in the background; training never waits for it until `wait()`.

    A thread takes the queue; given an `uploader` (upload_process.UploadProcess) the upload itself
    runs in that process, so that its hashing and HTTP work never competes with training for the
    GIL, and falls back to this thread if that process dies. When several checkpoints queue up, only
    the newest is uploaded. A failed upload is logged and the next checkpoint is tried; retention
    runs only after a newer checkpoint is complete.
    """

    def __init__(
        self, store: storage.Store, staging: Path, generation: int, keep_last: int, concurrency: int = 8, uploader=None
    ):
        self.store = store
        self.staging = staging
        self.generation = generation
        self.keep_last = keep_last
        self.concurrency = concurrency
        self.stats = SyncStats()
        self.superseded = False
        self._queue: queue.Queue = queue.Queue()
        self._pending = 0
        self._lock = threading.Condition()
        self._manifests: dict[str, dict | None] = {}
        self._worker = uploader
        self._thread = threading.Thread(target=self._run, name="checkpoint-sync", daemon=True)
        self._thread.start()

    def submit(self, step: int, folder: Path, best_step: int | None = None) -> None:
        """Queue `folder` (the Trainer's checkpoint at `step`) for upload; returns at once."""
        dest = self.staging / local_name(step)
        snapshot(folder, dest)
        with self._lock:
            self._pending += 1
        self._queue.put((step, dest, best_step))

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until every submitted checkpoint is uploaded or has failed; False on timeout."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._lock:
            while self._pending:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._lock.wait(left)
        return True

    def close(self) -> None:
        """Stop the upload process (after `wait()`)."""
        if self._worker is not None:
            self._worker.close()

    def _run(self) -> None:
        while True:
            items = [self._queue.get()]
            while True:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            *older, newest = sorted(items, key=lambda item: item[0])
            for step, dest, _ in older:
                log.info("checkpoint %d superseded by %d before upload: skipped", step, newest[0])
                shutil.rmtree(dest, ignore_errors=True)
            try:
                self._upload(*newest)
            except Exception as exc:
                self.stats.failures += 1
                log.error(
                    "upload of checkpoint %d failed (%s); training goes on and the next checkpoint will be tried",
                    newest[0],
                    exc,
                    exc_info=not isinstance(exc, FinetuneError),
                )
            finally:
                shutil.rmtree(newest[1], ignore_errors=True)
                with self._lock:
                    self._pending -= len(items)
                    self._lock.notify_all()

    def _upload(self, step: int, folder: Path, best_step: int | None) -> None:
        if self.superseded:
            return
        request = UploadRequest(
            self.store.uri, self.concurrency, folder, step, self.generation, self.keep_last, best_step
        )
        done = self._worker.upload(request) if self._worker is not None else None
        if done is None:  # no upload process, or it died: upload from here
            done = upload_checkpoint(self.store, request, self._manifests)
        if done.superseded:
            self.superseded = True
            raise WorldError(f"a newer attempt of this job writes to {self.store.uri}; this attempt stops writing")
        self.stats.uploads += 1
        self.stats.bytes += done.bytes
        self.stats.seconds += done.seconds
        self.stats.durable_step = step
        self.stats.durable_at = done.durable_at
        log.info(
            "checkpoint %d durable at %s%s (%.1f MB in %.1f s)",
            step,
            self.store.uri,
            store_name(step, self.generation),
            done.bytes / 1e6,
            done.seconds,
        )
        if done.removed:
            log.info("retention removed %s", ", ".join(done.removed))
