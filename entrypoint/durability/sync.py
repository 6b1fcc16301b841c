"""Checkpoint uploads in the background: training never waits for them until `wait()`."""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable
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
    runs only after a newer checkpoint is complete. An upload in the upload process that takes
    longer than `upload_timeout_s` counts as stalled: that process is stopped and the upload failed.
    """

    def __init__(
        self,
        store: storage.Store,
        staging: Path,
        generation: int,
        keep_last: int,
        concurrency: int = 8,
        uploader=None,
        upload_timeout_s: float | None = None,
    ):
        self.store = store
        self.staging = staging
        self.generation = generation
        self.keep_last = keep_last
        self.concurrency = concurrency
        self.upload_timeout_s = upload_timeout_s
        self.stats = SyncStats()
        self.superseded = False
        self._queue: queue.Queue = queue.Queue()
        self._pending = 0
        self._submitted = 0
        self._closed = threading.Event()
        self._lock = threading.Condition()
        self._manifests: dict[str, dict | None] = {}
        self._worker = uploader
        self._thread = threading.Thread(target=self._run, name="checkpoint-sync", daemon=True)
        self._thread.start()

    def submit(self, step: int, folder: Path, best_step: int | None = None) -> None:
        """Queue `folder` (the Trainer's checkpoint at `step`) for upload; returns at once. Each
        submission has a snapshot of its own, so a second save of the same step never disturbs
        the first one's upload or cleanup (and a step is committed once, see upload_checkpoint)."""
        with self._lock:
            self._submitted += 1
            number = self._submitted
        dest = self.staging / f"{local_name(step)}.{number}"
        snapshot(folder, dest)
        with self._lock:
            self._pending += 1
        self._queue.put((step, number, dest, best_step))

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

    def drain(self, deadline: Callable[[], float]) -> bool:
        """Wait for every submitted checkpoint until `deadline()` (a time.monotonic(), asked again as
        the wait goes on: a stop request during the wait brings it forward), then stop the upload
        process. False if uploads were still going at the deadline: they are abandoned."""
        while True:
            left = deadline() - time.monotonic()
            if self.wait(max(0.0, min(left, 1.0))):
                finished = True
                break
            if left <= 0:
                finished = False
                break
        self.close()
        return finished

    def unfinished(self, why: str) -> WorldError:
        """The error that ends a job whose uploads did not finish `why` (drain returned False)."""
        durable = self.stats.durable_step
        which = (
            f"the newest durable checkpoint of this attempt is step {durable}"
            if durable is not None
            else "no checkpoint of this attempt is durable"
        )
        return WorldError(
            f"checkpoint uploads to {self.store.uri} did not finish {why}: {which}; a retry resumes from the newest "
            "complete checkpoint there"
        )

    def close(self) -> None:
        """Stop the upload process (after `wait()` or `drain()`); an upload still in flight is
        abandoned, and nothing queued is uploaded any more."""
        self._closed.set()
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
            *older, newest = sorted(items, key=lambda item: item[:2])  # by step, then submission
            for step, _, dest, _ in older:
                log.info("checkpoint %d superseded by %d before upload: skipped", step, newest[0])
                shutil.rmtree(dest, ignore_errors=True)
            step, _, dest, best_step = newest
            try:
                if not self._closed.is_set():
                    self._upload(step, dest, best_step)
            except Exception as exc:
                self.stats.failures += 1
                if self._closed.is_set():  # the job gave up waiting (drain's deadline) and is ending
                    log.warning("upload of checkpoint %d abandoned (%s)", step, exc)
                    continue
                log.error(
                    "upload of checkpoint %d failed (%s); training goes on and the next checkpoint will be tried",
                    newest[0],
                    exc,
                    exc_info=not isinstance(exc, FinetuneError),
                )
            finally:
                shutil.rmtree(dest, ignore_errors=True)
                with self._lock:
                    self._pending -= len(items)
                    self._lock.notify_all()

    def _upload(self, step: int, folder: Path, best_step: int | None) -> None:
        if self.superseded:
            return
        request = UploadRequest(
            self.store.uri, self.concurrency, folder, step, self.generation, self.keep_last, best_step
        )
        done = self._worker.upload(request, self.upload_timeout_s) if self._worker is not None else None
        if done is None:  # no upload process, or it died: upload from here
            if self._closed.is_set():
                return
            done = upload_checkpoint(self.store, request, self._manifests)
        if done.durable_at is not None and not (done.already and self.stats.durable_step == step):
            self.stats.durable_step = step
            self.stats.durable_at = done.durable_at
        if done.superseded:
            self.superseded = True
            raise WorldError(f"a newer attempt of this job writes to {self.store.uri}; this attempt stops writing")
        if done.already:
            return
        self.stats.uploads += 1
        self.stats.bytes += done.bytes
        self.stats.seconds += done.seconds
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
