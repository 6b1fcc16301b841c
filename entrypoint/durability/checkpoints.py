"""Checkpoints that survive the machine: uploaded with a manifest written last (see manifests.py),
verified on the way back, and pruned without ever losing the last good one."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
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
    needed_by,
    sha256,
    store_name,
    to_delete,
    with_files_elsewhere,
)
from entrypoint.errors import UserError, WorldError
from entrypoint.io import disk, storage

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
    part: bool = False  # one machine's part of a job on several: its files uploaded, nothing committed


def identity(path: Path) -> tuple[int, int, int, int]:
    """What changes when a file is written again, even in place under the same name (a hard link
    shares the inode: the Trainer saving a step twice rewrites the files a snapshot links to)."""
    st = path.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def upload_hashed(store: storage.Store, folder: Path, name: str, step: int, generation: int, concurrency: int) -> dict:
    """Upload `folder` under `name/`, hashing each file in the same worker that uploads it (so
    hashing overlaps the other files' transfers); returns the manifest to commit. A file written
    while it was hashed or uploaded fails the upload: the manifest would not describe what was sent."""
    rels = [p.relative_to(folder).as_posix() for p in sorted(folder.rglob("*")) if p.is_file()]

    def send(rel: str) -> tuple[str, dict]:
        path = folder / rel
        before = identity(path)
        entry = {"size": before[1], "sha256": sha256(path)}
        store.upload_file(path, f"{name}/{rel}")
        if identity(path) != before:
            raise WorldError(f"{rel} of checkpoint {step} changed while it was uploaded; this upload is not committed")
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


def read_manifest(store: storage.Store, name: str) -> dict | None:
    """The manifest committed for checkpoint `name`, if any and readable."""
    return read_manifests(store, [name], {})[name]


def matches_store(store: storage.Store, name: str, manifest: dict) -> bool:
    """Whether the files at `name/` are the ones `manifest` lists, with the listed sizes."""
    listing = store.list(f"{name}/")
    files = {key[len(name) + 1 :]: size for key, size in listing.items()}
    step, generation = manifest.get("step", -1), manifest.get("generation", -1)
    return Checkpoint(name, step, generation, files, manifest).complete


def delete_checkpoints(store: storage.Store, doomed: list[Checkpoint]) -> None:
    """Delete the manifests first, so a kill half-way leaves incomplete (ignored) leftovers."""
    if not doomed:
        return
    store.delete([f"{c.name}/{MANIFEST}" for c in doomed if MANIFEST in c.files])
    store.delete([f"{c.name}/{rel}" for c in doomed for rel in c.files if rel != MANIFEST])


def _fetch_verified(store: storage.Store, name: str, folder: Path, expected: dict, rel: str) -> str | None:
    """Download one file of checkpoint `name` into `folder` and verify it in the same worker; `rel`
    if it is corrupt."""
    path = storage.safe_destination(folder, rel)
    store.download_file(f"{name}/{rel}", path)
    return rel if sha256(path) != expected[rel]["sha256"] else None


def fetch(
    store: storage.Store, cp: Checkpoint, scratch: Path, concurrency: int = 8, ranks: tuple[int, ...] | None = None
) -> Path | None:
    """Download complete checkpoint `cp` into `scratch`, verified; its folder, or None (with a
    warning) when it is corrupt or was deleted meanwhile. Given `ranks` (the world ranks of this
    machine's processes), the files of other machines' processes are left out."""
    folder = scratch / local_name(cp.step)
    shutil.rmtree(folder, ignore_errors=True)
    expected = {rel: meta for rel, meta in cp.manifest["files"].items() if needed_by(rel, ranks)}
    fetch_one = functools.partial(_fetch_verified, store, cp.name, folder, expected)
    needed = sum(int(meta.get("size", 0)) for meta in expected.values())
    try:
        with (
            disk.room_for(folder, f"downloading checkpoint {cp.name}", needed),
            concurrent.futures.ThreadPoolExecutor(max_workers=concurrency) as pool,
        ):
            bad = [rel for rel in pool.map(fetch_one, expected) if rel]
    except disk.DiskFull:
        raise
    except UserError as exc:  # NoSuchKey: deleted since the listing (another attempt's retention)?
        if matches_store(store, cp.name, cp.manifest):
            raise  # still there: the error is about access, not a vanished checkpoint
        log.warning("skipping checkpoint %s: it was deleted while it was being downloaded (%s)", cp.name, exc)
        shutil.rmtree(folder, ignore_errors=True)
        return None
    if bad:
        log.warning("skipping checkpoint %s: checksum mismatch in %s", cp.name, ", ".join(bad))
        shutil.rmtree(folder, ignore_errors=True)
        return None
    log.info("restored checkpoint %s (step %d) from %s", cp.name, cp.step, store.uri)
    return folder


def complete(store: storage.Store) -> list[Checkpoint]:
    """The complete checkpoints in `store`, newest first (the incomplete ones named in a warning)."""
    found = []
    for cp in scan(store):
        if cp.complete:
            found.append(cp)
        else:
            log.warning(
                "skipping checkpoint %s: incomplete (no manifest, or files missing or of the wrong size)", cp.name
            )
    return found


def restore(
    store: storage.Store, scratch: Path, concurrency: int = 8, ranks: tuple[int, ...] | None = None
) -> tuple[int, Path] | None:
    """Download the newest complete checkpoint that verifies into `scratch`; (step, folder) or None."""
    for cp in complete(store):
        folder = fetch(store, cp, scratch, concurrency, ranks)
        if folder is not None:
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
    already: bool = False  # this step was committed by an earlier upload of this attempt: nothing sent
    files: dict | None = None  # a part's files, {rel: {size, sha256}}, for the commit (UploadRequest.part)
    kept: tuple[str, ...] | None = None  # the complete checkpoints retention kept, newest first (None: it did not run)


def upload_checkpoint(store: storage.Store, request: UploadRequest, cache: dict[str, dict | None]) -> Uploaded:
    """Upload one checkpoint, commit it with its manifest unless a newer attempt took over the
    store, then apply retention (a failed retention is retried after the next checkpoint).

    A step is committed once: a second save of it (the Trainer saves a step twice when a stop lands
    on an epoch's end) sends nothing, since its files would replace those under the first manifest.
    The checkpoint counts as durable only if the manifest at the store describes the files there."""
    folder, step, generation, concurrency = request.folder, request.step, request.generation, request.concurrency
    started = time.monotonic()
    name = store_name(step, generation)
    if request.part:  # one machine's files; world rank 0 commits them all (commit)
        files = upload_hashed(store, folder, name, step, generation, concurrency)["files"]
        size = sum(meta["size"] for meta in files.values())
        return Uploaded(step, size, time.monotonic() - started, files=files)
    committed = read_manifest(store, name)
    if committed is not None:
        if not matches_store(store, name, committed):
            raise WorldError(f"checkpoint {name} at {store.uri} has a manifest that its files do not match")
        log.info("checkpoint %d was already committed as %s: this save of the same step is not uploaded", step, name)
        return Uploaded(step, durable_at=time.monotonic(), already=True)
    files = upload_hashed(store, folder, name, step, generation, concurrency)["files"]
    return commit(store, request, files, cache, started)


def commit(
    store: storage.Store,
    request: UploadRequest,
    files: dict,
    cache: dict[str, dict | None],
    started: float,
    elsewhere: dict[str, dict[str, int]] | None = None,
) -> Uploaded:
    """Write the manifest of checkpoint `request.step` listing `files` (uploaded already, by this
    machine or by every machine of the job) unless a newer attempt took over the store; then retention,
    which counts the files other machines hold in folders of their own (`elsewhere`, see
    manifests.with_files_elsewhere) but deletes only what is here."""
    step, generation, keep_last, best_step = request.step, request.generation, request.keep_last, request.best_step
    name = store_name(step, generation)
    manifest = {"format": FORMAT, "step": step, "generation": generation, "created_unix": time.time(), "files": files}
    if newest_generation(store) > generation:
        return Uploaded(step, superseded=True)
    if not store.write_bytes(f"{name}/{MANIFEST}", json.dumps(manifest, indent=1).encode(), if_absent=True):
        # Committed by another upload meanwhile: durable only if that manifest lists what was just sent.
        existing = read_manifest(store, name)
        if existing is None or existing.get("files") != manifest["files"] or not matches_store(store, name, existing):
            raise WorldError(f"checkpoint {name} at {store.uri} was committed meanwhile with other files")
    durable_at = time.monotonic()
    size = sum(meta["size"] for meta in manifest["files"].values())
    removed: tuple[str, ...] = ()
    kept: tuple[str, ...] | None = None
    try:
        # Only this attempt's checkpoints and older ones; and none at all once a newer attempt has
        # started (checked right before deleting): a stale attempt never deletes a newer one's work.
        here = scan(store, cache)
        whole = with_files_elsewhere(here, elsewhere or {})
        names = {c.name for c in to_delete(whole, keep_last, best_step, generation)}
        doomed = [c for c in here if c.name in names]
        if doomed and newest_generation(store) > generation:
            return Uploaded(step, size, durable_at - started, durable_at, superseded=True)
        delete_checkpoints(store, doomed)
        removed = tuple(c.name for c in doomed)
        kept = tuple(c.name for c in whole if c.complete and c.name not in names)
    except Exception:
        log.warning("retention after checkpoint %d failed; it is retried after the next one", step, exc_info=True)
    return Uploaded(step, size, durable_at - started, durable_at, removed, kept=kept)
