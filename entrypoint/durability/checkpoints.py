"""Checkpoints that survive the machine: uploaded with a manifest written last (see manifests.py),
verified on the way back, and pruned without ever losing the last good one."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

from entrypoint.durability.attempts import newest_generation
from entrypoint.durability.manifests import (
    FORMAT,
    MANIFEST,
    Checkpoint,
    checkpoints_from,
    group,
    local_name,
    sha256,
    store_name,
    to_delete,
)
from entrypoint.io import storage

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class UploadRequest:
    """One checkpoint to upload (it may travel to the upload process, see upload_process.py)."""

    uri: str
    concurrency: int
    folder: Path
    step: int
    generation: int
    keep_last: int
    best_step: int | None


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


def read_manifests(
    store: storage.Store, folders: Iterable[str], cache: dict[str, dict | None]
) -> dict[str, dict | None]:
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
            log.warning(
                "skipping checkpoint %s: incomplete (no manifest, or files missing or of the wrong size)", cp.name
            )
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


@dataclasses.dataclass(frozen=True)
class Uploaded:
    """What one upload did (it may have run in the upload process, see upload_worker)."""

    step: int
    bytes: int = 0
    seconds: float = 0.0
    durable_at: float | None = None  # time.monotonic(): one clock for every process of a machine
    removed: tuple[str, ...] = ()
    superseded: bool = False


def upload_checkpoint(store: storage.Store, request: UploadRequest, cache: dict[str, dict | None]) -> Uploaded:
    """Upload one checkpoint, commit it with its manifest unless a newer attempt took over the
    store, then apply retention (a failed retention is retried after the next checkpoint)."""
    folder, step, generation, keep_last, best_step = (
        request.folder,
        request.step,
        request.generation,
        request.keep_last,
        request.best_step,
    )
    concurrency = request.concurrency
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
    except Exception:
        log.warning("retention after checkpoint %d failed; it is retried after the next one", step, exc_info=True)
    return Uploaded(step, size, durable_at - started, durable_at, removed)
