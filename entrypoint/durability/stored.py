"""Folders kept at a store under the checkpoint rule (manifests.py): the files first, then a
manifest with each file's size and sha256, written last. A folder is complete only when every
listed file has its listed size; a local copy is used only once every file matches its sha256.

What outlives an attempt besides checkpoints uses this: the Hub mirror and the prepared data at
FT_CACHE_URI (job/sources.py, job/prepared.py).
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
from pathlib import Path

from entrypoint.durability.checkpoints import upload_hashed
from entrypoint.durability.manifests import MANIFEST, Checkpoint, sha256
from entrypoint.io import storage

log = logging.getLogger(__name__)


def put(store: storage.Store, folder: Path, name: str, concurrency: int, meta: dict | None = None) -> dict:
    """Upload every file of `folder` under `name/`, then its manifest (with `meta`); returns it.
    Written again, the manifest is replaced: the files it lists are all in place by then."""
    (folder / MANIFEST).unlink(missing_ok=True)  # a copy fetched earlier is not one of the files
    manifest = upload_hashed(store, folder, name, 0, 0, concurrency)
    manifest.update(meta or {})
    store.write_bytes(f"{name}/{MANIFEST}", json.dumps(manifest, indent=1, sort_keys=True).encode())
    return manifest


def complete_manifest(store: storage.Store, name: str) -> dict | None:
    """The manifest of the folder `name` if the folder is complete (else None)."""
    raw = store.read_bytes(f"{name}/{MANIFEST}")
    if raw is None:
        return None
    try:
        manifest = json.loads(raw)
    except ValueError:
        log.warning("%s%s has an unreadable manifest: treated as incomplete", store.uri, name)
        return None
    files = {key[len(name) + 1 :]: size for key, size in store.list(f"{name}/").items()}
    return manifest if Checkpoint(name, 0, 0, files, manifest).complete else None


def fetch(store: storage.Store, name: str, dest: Path, concurrency: int, label: str) -> tuple[Path, dict] | None:
    """A verified local copy of the complete folder `name` and its manifest, or None when it is
    incomplete. From S3 it is downloaded into `dest` (files already there from the same objects
    are kept); a local store's folder is used where it is. A copy whose files do not match the
    manifest's checksums makes the folder incomplete again (its manifest is deleted) and gives None."""
    manifest = complete_manifest(store, name)
    if manifest is None:
        return None
    local = storage.fetch(store.uri + name + "/", dest, concurrency, label=label)
    bad = corrupt(local, manifest, concurrency)
    if bad:
        log.warning(
            "%s%s: checksum mismatch in %s; its manifest is removed so that it is written again",
            store.uri,
            name,
            ", ".join(bad[:5]),
        )
        store.delete([f"{name}/{MANIFEST}"])
        return None
    return local, manifest


def corrupt(folder: Path, manifest: dict, concurrency: int = 4) -> list[str]:
    """The files of `manifest` that are missing under `folder` or differ from their sha256."""

    def bad(item: tuple[str, dict]) -> str | None:
        rel, meta = item
        path = folder / rel
        return rel if not path.is_file() or sha256(path) != meta.get("sha256") else None

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        return [rel for rel in pool.map(bad, sorted(manifest["files"].items())) if rel]
