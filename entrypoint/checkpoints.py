"""Checkpoints that survive the machine: uploaded in the background, committed by a manifest
written last, verified on the way back, and pruned without ever losing the last good one.

Layout at FT_CHECKPOINT_URI:
    _attempts/000001                          one per run attempt (fencing, see `claim_generation`)
    checkpoint-000000050-g0001/...            the Trainer's checkpoint files
    checkpoint-000000050-g0001/finetune-manifest.json   size + sha256 of every file, written last
A checkpoint is complete only when its manifest exists and every listed file has the listed size;
its checksums are verified after download. Anything else is skipped with a warning, never loaded.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import os
import queue
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Iterable

from . import storage
from .errors import FinetuneError, WorldError

log = logging.getLogger(__name__)

MANIFEST = "finetune-manifest.json"
ATTEMPTS = "_attempts/"
NAME_RE = re.compile(r"^checkpoint-(\d+)-g(\d+)$")
FORMAT = 1


def store_name(step: int, generation: int) -> str:
    return f"checkpoint-{step:09d}-g{generation:04d}"


def local_name(step: int) -> str:
    """The Trainer's own folder name, which resume_from_checkpoint expects."""
    return f"checkpoint-{step}"


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    name: str
    step: int
    generation: int
    files: dict[str, int]  # path relative to the checkpoint folder -> size as listed
    manifest: dict | None

    @property
    def complete(self) -> bool:
        if not self.manifest or self.manifest.get("format") != FORMAT:
            return False
        entries = self.manifest.get("files", {})
        return bool(entries) and all(self.files.get(rel) == meta.get("size") for rel, meta in entries.items())


def group(listing: dict[str, int]) -> dict[str, dict[str, int]]:
    """{checkpoint folder: {relative path: size}} for the keys that belong to a checkpoint."""
    out: dict[str, dict[str, int]] = {}
    for key, size in listing.items():
        folder, _, rel = key.partition("/")
        if rel and NAME_RE.match(folder):
            out.setdefault(folder, {})[rel] = size
    return out


def checkpoints_from(listing: dict[str, int], manifests: dict[str, dict | None]) -> list[Checkpoint]:
    """Every checkpoint in a listing, newest first (by step, then attempt generation)."""
    found = []
    for folder, files in group(listing).items():
        step, generation = (int(x) for x in NAME_RE.match(folder).groups())
        found.append(Checkpoint(folder, step, generation, files, manifests.get(folder)))
    return sorted(found, key=lambda c: (c.step, c.generation), reverse=True)


def latest_complete(checkpoints: list[Checkpoint]) -> Checkpoint | None:
    return next((c for c in checkpoints if c.complete), None)


def to_delete(checkpoints: list[Checkpoint], keep_last: int, best_step: int | None) -> list[Checkpoint]:
    """The checkpoints retention removes: complete ones beyond the newest `keep_last` (the best
    one excepted), and incomplete leftovers older than the newest complete one. Nothing at all
    while no checkpoint is complete."""
    complete = [c for c in checkpoints if c.complete]
    if not complete:
        return []
    keep = {c.name for c in complete[:keep_last]}
    if best_step is not None:
        keep |= {c.name for c in complete if c.step == best_step}
    newest = complete[0]
    doomed = [c for c in complete if c.name not in keep]
    doomed += [c for c in checkpoints if not c.complete and (c.step, c.generation) < (newest.step, newest.generation)]
    return doomed


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_manifest(folder: Path, step: int, generation: int) -> dict:
    files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
    return {
        "format": FORMAT,
        "step": step,
        "generation": generation,
        "created_unix": time.time(),
        "files": {rel: {"size": p.stat().st_size, "sha256": sha256(p)} for rel, p in files.items()},
    }


def upload_hashed(store: storage.Store, folder: Path, name: str, step: int, generation: int, concurrency: int) -> dict:
    """Upload `folder` under `name/`, hashing each file in the same worker that uploads it (so
    hashing overlaps the other files' transfers); returns the manifest to commit."""
    rels = [p.relative_to(folder).as_posix() for p in sorted(folder.rglob("*")) if p.is_file()]

    def send(rel: str) -> tuple[str, dict]:
        path = folder / rel
        entry = {"size": path.stat().st_size, "sha256": sha256(path)}
        store.upload_file(path, f"{name}/{rel}")
        return rel, entry

    with concurrent.futures.ThreadPoolExecutor(max_workers=concurrency) as pool:
        entries = dict(pool.map(send, rels))
    return {"format": FORMAT, "step": step, "generation": generation, "created_unix": time.time(), "files": entries}


def read_manifests(store: storage.Store, folders: Iterable[str], cache: dict[str, dict | None]) -> dict[str, dict | None]:
    """The parsed manifest of each folder that lists one (manifests never change once written)."""
    for folder in folders:
        if folder not in cache:
            raw = store.read_bytes(f"{folder}/{MANIFEST}")
            try:
                cache[folder] = json.loads(raw) if raw is not None else None
            except ValueError:
                log.warning("checkpoint %s has an unreadable manifest: treated as incomplete", folder)
                cache[folder] = None
    return cache


def scan(store: storage.Store, cache: dict[str, dict | None] | None = None) -> list[Checkpoint]:
    """The checkpoints in `store`, newest first."""
    listing = store.list()
    with_manifest = [folder for folder, files in group(listing).items() if MANIFEST in files]
    manifests = read_manifests(store, with_manifest, {} if cache is None else cache)
    return checkpoints_from(listing, manifests)


def delete_checkpoints(store: storage.Store, doomed: list[Checkpoint]) -> None:
    """Delete the manifests first, so a kill half-way leaves incomplete (ignored) leftovers."""
    if not doomed:
        return
    store.delete([f"{c.name}/{MANIFEST}" for c in doomed if MANIFEST in c.files])
    store.delete([f"{c.name}/{rel}" for c in doomed for rel in c.files if rel != MANIFEST])


def restore(store: storage.Store, scratch: Path, concurrency: int = 8) -> tuple[int, Path] | None:
    """Download the newest complete checkpoint that verifies into `scratch`; (step, folder) or None."""
    checkpoints = scan(store)
    for cp in checkpoints:
        if not cp.complete:
            log.warning("skipping checkpoint %s: incomplete (no manifest, or files missing or of the wrong size)", cp.name)
            continue
        folder = scratch / local_name(cp.step)
        shutil.rmtree(folder, ignore_errors=True)
        expected = cp.manifest["files"]

        def fetch(rel: str) -> str | None:
            """Download one file and verify it in the same worker; the name if it is corrupt."""
            path = storage.safe_destination(folder, rel)
            store.download_file(f"{cp.name}/{rel}", path)
            return rel if sha256(path) != expected[rel]["sha256"] else None

        with concurrent.futures.ThreadPoolExecutor(max_workers=concurrency) as pool:
            bad = [rel for rel in pool.map(fetch, expected) if rel]
        if bad:
            log.warning("skipping checkpoint %s: checksum mismatch in %s", cp.name, ", ".join(bad))
            shutil.rmtree(folder, ignore_errors=True)
            continue
        log.info("restored checkpoint %s (step %d) from %s", cp.name, cp.step, store.uri)
        return cp.step, folder
    return None


def claim_generation(store: storage.Store, label: str) -> int:
    """A number no earlier attempt of this job used. A newer number at the store means this
    attempt is stale (a zombie still running after a restart) and must stop writing."""
    taken = [int(k[len(ATTEMPTS):]) for k in store.list(ATTEMPTS) if k[len(ATTEMPTS):].isdigit()]
    generation = max(taken, default=0) + 1
    payload = json.dumps({"label": label, "pid": os.getpid(), "started_unix": time.time()}).encode()
    while not store.write_bytes(f"{ATTEMPTS}{generation:06d}", payload, if_absent=True):
        generation += 1
    return generation


def newest_generation(store: storage.Store) -> int:
    return max((int(k[len(ATTEMPTS):]) for k in store.list(ATTEMPTS) if k[len(ATTEMPTS):].isdigit()), default=0)


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


@dataclasses.dataclass(frozen=True)
class Uploaded:
    """What one upload did (it may have run in the upload process, see upload_worker)."""

    step: int
    bytes: int = 0
    seconds: float = 0.0
    durable_at: float | None = None  # time.monotonic(): one clock for every process of a machine
    removed: tuple[str, ...] = ()
    superseded: bool = False


def upload_checkpoint(store: storage.Store, folder: Path, step: int, generation: int, keep_last: int,
                      best_step: int | None, concurrency: int, cache: dict[str, dict | None]) -> Uploaded:
    """Upload one checkpoint, commit it with its manifest unless a newer attempt took over the
    store, then apply retention (a failed retention is retried after the next checkpoint)."""
    started = time.monotonic()
    name = store_name(step, generation)
    manifest = upload_hashed(store, folder, name, step, generation, concurrency)
    if newest_generation(store) > generation:
        return Uploaded(step, superseded=True)
    store.write_bytes(f"{name}/{MANIFEST}", json.dumps(manifest, indent=1).encode(), if_absent=True)
    durable_at = time.monotonic()
    size = sum(meta["size"] for meta in manifest["files"].values())
    removed: tuple[str, ...] = ()
    try:
        doomed = to_delete(scan(store, cache), keep_last, best_step)
        delete_checkpoints(store, doomed)
        removed = tuple(c.name for c in doomed)
    except Exception:  # noqa: BLE001 - the checkpoint is durable; old ones go next time
        log.warning("retention after checkpoint %d failed; it is retried after the next one", step, exc_info=True)
    return Uploaded(step, size, durable_at - started, durable_at, removed)


class CheckpointSync:
    """Uploads checkpoints in the background; training never waits for it until `wait()`.

    A thread takes the queue; with `separate_process` the upload itself runs in an upload process
    (upload_worker), so that its hashing and HTTP work never competes with training for the GIL,
    and falls back to this thread if that process dies. When several checkpoints queue up, only
    the newest is uploaded. A failed upload is logged and the next checkpoint is tried; retention
    runs only after a newer checkpoint is complete.
    """

    def __init__(self, store: storage.Store, staging: Path, generation: int, keep_last: int, concurrency: int = 8,
                 separate_process: bool = False):
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
        self._worker = None
        if separate_process:
            from . import upload_worker

            self._worker = upload_worker.start()  # from this (the main) thread: it dies with the process
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
            except Exception as exc:  # noqa: BLE001 - background work: log, keep training, try the next one
                self.stats.failures += 1
                log.error("upload of checkpoint %d failed (%s); training goes on and the next checkpoint will be tried",
                          newest[0], exc, exc_info=not isinstance(exc, FinetuneError))
            finally:
                shutil.rmtree(newest[1], ignore_errors=True)
                with self._lock:
                    self._pending -= len(items)
                    self._lock.notify_all()

    def _upload(self, step: int, folder: Path, best_step: int | None) -> None:
        if self.superseded:
            return
        request = (self.store.uri, self.concurrency, folder, step, self.generation, self.keep_last, best_step)
        done = self._worker.upload(*request) if self._worker is not None else None
        if done is None:  # no upload process, or it died: upload from here
            done = upload_checkpoint(self.store, folder, step, self.generation, self.keep_last, best_step,
                                     self.concurrency, self._manifests)
        if done.superseded:
            self.superseded = True
            raise WorldError(f"a newer attempt of this job writes to {self.store.uri}; this attempt stops writing")
        self.stats.uploads += 1
        self.stats.bytes += done.bytes
        self.stats.seconds += done.seconds
        self.stats.durable_step = step
        self.stats.durable_at = done.durable_at
        log.info("checkpoint %d durable at %s%s (%.1f MB in %.1f s)", step, self.store.uri, store_name(step, self.generation),
                 done.bytes / 1e6, done.seconds)
        if done.removed:
            log.info("retention removed %s", ", ".join(done.removed))


def record_attempt_end(store: storage.Store, generation: int, outcome: str, figures: dict) -> None:
    """Note how an attempt ended next to its claim, for the run's preemption accounting."""
    payload = json.dumps({"outcome": outcome, **figures}).encode()
    store.write_bytes(f"{ATTEMPTS}{generation:06d}.end.json", payload)


def attempt_history(store: storage.Store) -> list[dict]:
    """The recorded endings of earlier attempts (killed attempts record nothing)."""
    out = []
    for key in sorted(store.list(ATTEMPTS)):
        if key.endswith(".end.json"):
            raw = store.read_bytes(key)
            try:
                out.append(json.loads(raw) if raw else {})
            except ValueError:
                continue
    return out
