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

from entrypoint.durability.checkpoints import UploadRequest, commit, delete_checkpoints, upload_checkpoint
from entrypoint.durability.manifests import checkpoints_from, local_name, merge_parts, parts_to_delete, store_name
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
    in_flight_step: int | None = None  # the checkpoint being uploaded now, since in_flight_since (monotonic)
    in_flight_since: float | None = None

    def count(self, size: int, seconds: float) -> None:
        """One upload of `size` bytes that took `seconds`."""
        self.uploads += 1
        self.bytes += size
        self.seconds += seconds

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

    On a job of several machines (`nodes` > 1) each machine's first process has one: it uploads the
    files this machine wrote as its part of the checkpoint, and reports the part (or its failure)
    through `take_reports`; world rank 0's (`node` 0) waits for every other machine's report, handed
    to it with `deliver` (see share_parts), and only then commits one manifest listing them all.
    Its retention counts the other machines' reported files, and what it kept goes back to them
    (`take_reports` there, `apply_retention` here): where the checkpoint location is each machine's
    own folder (SageMaker's /opt/ml/checkpoints, synced by the platform into one S3 prefix), each
    machine deletes its own parts of the checkpoints world rank 0 removed.
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
        node: int = 0,
        nodes: int = 1,
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
        self.node, self.nodes = node, nodes
        self._parts: dict[int, dict[int, dict]] = {}  # world rank 0: {step: {node: report}}
        self._elsewhere: dict[str, dict[str, int]] = {}  # world rank 0: other machines' files of each commit
        self._reports: list[dict] = []  # news for the other machines, until taken (see share_parts)
        self._worker = uploader
        self._cancelled_step: int | None = None
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

    def cancel_in_flight(self) -> bool:
        """Abandon the upload in flight for a newer checkpoint (a stop checkpoint that could not be
        durable in time after it): the upload process is stopped, the abandoned checkpoint's manifest
        is never committed (it stays incomplete, never loaded), and later uploads go from this
        process. False when there is nothing to abandon or no upload process to stop."""
        step = self.stats.in_flight_step
        if step is None or self._worker is None or not getattr(self._worker, "alive", False):
            return False
        self._cancelled_step = step
        self._worker.close()  # returns once the upload in flight has seen it (within upload_process.POLL_S)
        return True

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
                self._report(step, error=f"node {self.node} skipped it for the newer checkpoint {newest[0]}")
            step, _, dest, best_step = newest
            try:
                if not self._closed.is_set():
                    self.stats.in_flight_step, self.stats.in_flight_since = step, time.monotonic()
                    self._upload(step, dest, best_step)
            except Exception as exc:
                if step == self._cancelled_step:  # cancel_in_flight: its manifest is never committed
                    log.warning("upload of checkpoint %d abandoned for a newer one (%s)", step, exc)
                    continue
                self.stats.failures += 1
                self._report(step, error=f"node {self.node}: {exc}")
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
                self.stats.in_flight_step = self.stats.in_flight_since = None
                shutil.rmtree(dest, ignore_errors=True)
                with self._lock:
                    self._pending -= len(items)
                    self._lock.notify_all()

    def _upload(self, step: int, folder: Path, best_step: int | None) -> None:
        if self.superseded:
            return
        request = UploadRequest(
            self.store.uri, self.concurrency, folder, step, self.generation, self.keep_last, best_step, self.nodes > 1
        )
        started = time.monotonic()
        done = self._worker.upload(request, self.upload_timeout_s) if self._worker is not None else None
        if done is None:  # no upload process, or it died: upload from here
            if self._closed.is_set():
                return
            done = upload_checkpoint(self.store, request, self._manifests)
        if request.part and self.node > 0:  # this machine's part: world rank 0 commits it
            self._report(step, files=done.files)
            self.stats.count(done.bytes, done.seconds)
            log.info(
                "checkpoint %d: this machine's part (node %d, %.1f MB) uploaded in %.1f s; world rank 0 commits it",
                step,
                self.node,
                done.bytes / 1e6,
                done.seconds,
            )
            return
        if request.part:  # world rank 0: every machine's part, then one manifest for them all
            own = done.files
            assert own is not None
            files = self._await_parts(step, own)
            name = store_name(step, self.generation)
            self._elsewhere[name] = {rel: meta["size"] for rel, meta in files.items() if rel not in own}
            done = commit(self.store, request, files, self._manifests, started, self._elsewhere)
            if done.kept is not None:  # the other machines delete their parts of what retention removed
                self._elsewhere = {n: f for n, f in self._elsewhere.items() if n in done.kept}
                with self._lock:
                    self._reports.append({"keep": list(done.kept)})
        if done.durable_at is not None and not (done.already and self.stats.durable_step == step):
            self.stats.durable_step = step
            self.stats.durable_at = done.durable_at
        if done.superseded:
            self.superseded = True
            raise WorldError(f"a newer attempt of this job writes to {self.store.uri}; this attempt stops writing")
        if done.already:
            return
        self.stats.count(done.bytes, done.seconds)
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

    # -- a job on several machines ------------------------------------------------------------

    def _report(self, step: int, files: dict | None = None, error: str | None = None) -> None:
        """Another machine's part of checkpoint `step`: uploaded (its files) or not (why)."""
        if self.nodes > 1 and self.node > 0:
            with self._lock:
                self._reports.append({"step": step, "node": self.node, "files": files, "error": error})

    def take_reports(self) -> list[dict]:
        """This machine's news since the last call (see share_parts): another machine's reports of its
        parts; world rank 0's retention (the complete checkpoints it kept)."""
        with self._lock:
            reports, self._reports = self._reports, []
        return reports

    def deliver(self, report: dict) -> None:
        """World rank 0: another machine's report of its part of a checkpoint."""
        with self._lock:
            self._parts.setdefault(report["step"], {})[report["node"]] = report
            self._lock.notify_all()

    def apply_retention(self, news: dict) -> None:
        """Another machine: world rank 0's retention applied to this machine's parts, where the
        checkpoint location is a folder of this machine (an S3 prefix is one store for all machines:
        world rank 0's retention has covered it)."""
        if storage.is_s3(self.store.uri):
            return
        try:
            doomed = parts_to_delete(checkpoints_from(self.store.list(), {}), news["keep"], self.generation)
            delete_checkpoints(self.store, doomed)
        except OSError as exc:
            log.warning("removing this machine's parts of older checkpoints failed (%s); retried later", exc)
            return
        if doomed:
            log.info("retention removed this machine's parts of %s", ", ".join(c.name for c in doomed))

    def _await_parts(self, step: int, own: dict) -> dict:
        """The files of checkpoint `step` from every machine, once each has reported its part;
        WorldError when one failed, or did not report within FT_UPLOAD_TIMEOUT_SECONDS."""
        timeout_s = self.upload_timeout_s if self.upload_timeout_s is not None else float("inf")
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while True:
                got = self._parts.get(step, {})
                failed = [r["error"] for r in got.values() if r.get("error")]
                missing = sorted(set(range(1, self.nodes)) - set(got))
                if failed:
                    raise WorldError(f"checkpoint {step} is not committed: {failed[0]}")
                if not missing:
                    break
                if self._closed.is_set():
                    raise WorldError(f"checkpoint {step} is not committed: the job is ending")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WorldError(
                        f"checkpoint {step} is not committed: node(s) {missing} did not report their part within "
                        f"{timeout_s:.0f} s (FT_UPLOAD_TIMEOUT_SECONDS)"
                    )
                self._lock.wait(min(left, 0.5))
            for older in [s for s in self._parts if s <= step]:
                del self._parts[older]
        try:
            return merge_parts({0: own, **{node: report["files"] for node, report in got.items()}})
        except ValueError as exc:
            raise WorldError(f"checkpoint {step} is not committed: {exc}") from None


def share_parts(sync: CheckpointSync | None, nodes: int) -> None:
    """Hand the reports of the other machines' parts to world rank 0's CheckpointSync, and world
    rank 0's retention to the others'. Every process calls it at the same point (a step's end, the
    end of training): one small all-reduce when no machine has news, an all-gather when one has."""
    if nodes == 1:
        return
    from entrypoint.parallel import collectives

    mine = sync.take_reports() if sync is not None else []
    for news in collectives.gather_if_any(mine):
        if sync is None:
            continue
        if "keep" in news and sync.node > 0:
            sync.apply_retention(news)
        elif "step" in news and sync.node == 0:
            sync.deliver(news)
