"""Where the base model and the data come from: an S3 prefix, a local path, or the Hugging Face Hub
(FT_MODEL=org/name[@revision], FT_TRAIN_DATA=hf://datasets/org/name[@revision][/folder-or-glob]).

A Hub repository is read through a mirror at FT_CACHE_URI, filled by the first attempt that needs
it and read by every later one (restarts, other array children, `finetune tune` trials), which
then never call the Hub: a gated model, an outage or a rate limit cannot fail a restart.

    hub/{models,datasets}/{org}--{name}/refs/{revision}.json   {revision, commit, files}: pins the
                                                              commit a revision resolved to
    hub/{models,datasets}/{org}--{name}/{commit}/...           the files taken from that commit
    hub/{models,datasets}/{org}--{name}/{commit}/finetune-manifest.json   size + sha256, written last

The ref record is written once (create-if-absent), so every attempt sharing the cache trains on
the same commit; delete it (or pin @commit) to move to a newer one. The commit folder follows the
checkpoint rule (durability/stored.py).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import logging
import os
import shutil
import time
from pathlib import Path, PurePosixPath
from urllib.parse import quote

from entrypoint.durability import stored
from entrypoint.durability.manifests import sha256
from entrypoint.errors import UserError, WorldError
from entrypoint.io import hub, storage
from entrypoint.job import data, modeling

log = logging.getLogger(__name__)

SAFE_WEIGHTS = (".safetensors", ".safetensors.index.json")
PICKLE_WEIGHTS = (".bin", ".bin.index.json", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# Other frameworks' weights and code: never needed to load a transformers model with PyTorch, and
# code is never run (no trust_remote_code).
NOT_TAKEN = (".h5", ".msgpack", ".onnx", ".onnx_data", ".ot", ".tflite", ".gguf", ".mlmodel", ".pb", ".npz", ".py")


@dataclasses.dataclass(frozen=True)
class HubSource:
    """A Hub input as this job uses it: the repository, the commit its revision resolved to, the
    files taken from it, and where they are mirrored."""

    setting: str
    repo: hub.HubRepo
    commit: str
    files: tuple[str, ...]
    entry: str  # the commit's folder at FT_CACHE_URI

    def record(self) -> dict:
        """For metrics.json and the model card."""
        return {"hub_id": self.repo.repo_id, "revision": self.repo.revision, "commit": self.commit}


@dataclasses.dataclass(frozen=True)
class DataSource:
    """FT_TRAIN_DATA or FT_EVAL_DATA: its URI, its Hub source if any, and what identifies its
    content without downloading it (for the prepared-data key)."""

    setting: str
    uri: str
    hub: HubSource | None
    identity: dict


# -- which files, where (pure) ----------------------------------------------------------------------


def model_files(files: dict[str, int], allow_pickle: bool, label: str) -> list[str]:
    """The files of a Hub model repository a job takes: the top-level files (a model folder as
    `save_pretrained` writes it) but hidden ones, other frameworks' weights and code, with safetensors
    weights, or pickle weights only where there are none and FT_ALLOW_PICKLE_WEIGHTS allows them."""
    top = [f for f in files if "/" not in f and not f.startswith(".") and not f.endswith(NOT_TAKEN)]
    if "config.json" not in top:
        raise UserError(f"FT_MODEL: {label} has no config.json at its top level: it is not a transformers model.")
    safe = [f for f in top if f.endswith(SAFE_WEIGHTS)]
    pickled = [f for f in top if f.endswith(PICKLE_WEIGHTS)]
    others = [f for f in top if f not in safe and f not in pickled]
    if safe:
        return sorted(others + safe)
    if not pickled:
        raise UserError(f"FT_MODEL: {label} has no weights (no *.safetensors at its top level).")
    if not allow_pickle:
        raise UserError(
            f"FT_MODEL: {label} has pickle weights only ({', '.join(sorted(pickled))}); loading pickle can run "
            "code. Use a revision with safetensors weights (FT_MODEL=org/name@revision), or set "
            "FT_ALLOW_PICKLE_WEIGHTS=true if you trust this repository."
        )
    return sorted(others + pickled)


def data_files(files: dict[str, int], path: str, label: str, setting: str) -> list[str]:
    """The data files (csv, jsonl/json, parquet) of a Hub data set that `path` names: every one
    (no path), the file itself, those under a folder, or those matching a glob."""
    usable = sorted(f for f in files if PurePosixPath(f).suffix.lower() in data.FORMATS and not f.startswith("."))
    if not path:
        chosen = usable
    elif path in usable:
        chosen = [path]
    else:
        chosen = [f for f in usable if f.startswith(path + "/") or fnmatch.fnmatchcase(f, path)]
    if not chosen:
        shown = ", ".join(usable[:8]) + (", ..." if len(usable) > 8 else "") if usable else "none"
        raise UserError(
            f"{setting}: {label} has no csv, jsonl, json or parquet file at {path or 'its top'!r}. "
            f"Its data files: {shown}."
        )
    return chosen


def repo_folder(repo: hub.HubRepo) -> str:
    return f"hub/{repo.kind}s/{repo.repo_id.replace('/', '--')}"


def ref_key(repo: hub.HubRepo) -> str:
    return f"{repo_folder(repo)}/refs/{quote(repo.revision, safe='')}.json"


# -- the mirror (effects) ------------------------------------------------------------------------------


class Mirror:
    """The Hub mirror at FT_CACHE_URI: `source` (main process) pins a revision's commit and makes
    sure the commit's files are mirrored; `local_copy` (each machine) is a verified copy of them."""

    def __init__(self, uri: str, work: Path, concurrency: int):
        self.store = storage.open_store(uri, concurrency)
        self.work, self.concurrency = work, concurrency

    def source(self, repo: hub.HubRepo, setting: str, select, dest: Path) -> HubSource:
        """The commit `repo`'s revision is pinned to at this cache (resolved on the Hub the first
        time), with the files `select(files)` takes mirrored. Files downloaded from the Hub here are
        also placed in `dest`, so that `local_copy` into `dest` on this machine downloads nothing."""
        snapshot = self._pinned(repo, setting)
        wanted = select(snapshot.files)
        entry = f"{repo_folder(repo)}/{snapshot.commit}"
        source = HubSource(setting, repo, snapshot.commit, tuple(wanted), entry)
        manifest = stored.complete_manifest(self.store, entry)
        if manifest is not None and set(wanted) <= set(manifest["files"]):
            log.info(
                "%s: %s is commit %s, mirrored at %s%s", setting, repo.label, snapshot.commit, self.store.uri, entry
            )
            return source
        if hub.offline():
            raise UserError(
                f"{setting}: {repo.label} (commit {snapshot.commit}) is not mirrored at {self.store.uri} and "
                "HF_HUB_OFFLINE is set: unset it for the attempt that mirrors it."
            )
        started = time.monotonic()
        folder = hub.download(snapshot, wanted, self.work / "hf-hub", setting, self.concurrency)
        put = stored.put(self.store, folder, entry, self.concurrency, {"hub": {**source.record(), "kind": repo.kind}})
        megabytes = sum(meta["size"] for meta in put["files"].values()) / 1e6
        log.info(
            "%s: %s is commit %s: downloaded from the Hub and mirrored at %s%s (%d files, %.1f MB, %.1f s)",
            setting,
            repo.label,
            snapshot.commit,
            self.store.uri,
            entry,
            len(put["files"]),
            megabytes,
            time.monotonic() - started,
        )
        place(folder, dest)
        storage.adopt(dest, self.store.uri + entry + "/", self.concurrency)
        return source

    def _pinned(self, repo: hub.HubRepo, setting: str) -> hub.Snapshot:
        """The snapshot the ref record pins; without one, the revision resolved on the Hub now and
        pinned (the first writer wins: every attempt sharing the cache uses its commit)."""
        key = ref_key(repo)
        recorded = self._read_ref(key)
        if recorded is None:
            if hub.offline():
                raise UserError(
                    f"{setting}: {repo.label} has no ref record at {self.store.uri}{key} and HF_HUB_OFFLINE is set: "
                    "unset it for the first attempt, or point FT_CACHE_URI at a cache that holds it."
                )
            snapshot = hub.resolve(repo, setting)
            record = {
                "repo": repo.repo_id,
                "kind": repo.kind,
                "revision": repo.revision,
                "commit": snapshot.commit,
                "files": snapshot.files,
                "resolved_unix": time.time(),
            }
            if self.store.write_bytes(key, json.dumps(record, indent=1, sort_keys=True).encode(), if_absent=True):
                return snapshot
            recorded = self._read_ref(key)  # another attempt pinned it first: use its commit
            if recorded is None:
                raise WorldError(f"{setting}: cannot read the ref record {self.store.uri}{key}; try again.")
        return hub.Snapshot(repo, recorded["commit"], {k: int(v) for k, v in recorded["files"].items()})

    def _read_ref(self, key: str) -> dict | None:
        raw = self.store.read_bytes(key)
        if raw is None:
            return None
        try:
            record = json.loads(raw)
            if hub.is_commit(record["commit"]) and isinstance(record["files"], dict):
                return record
        except (ValueError, KeyError, TypeError):
            pass
        raise UserError(f"The ref record {self.store.uri}{key} is unreadable: delete it to resolve the revision again.")

    def local_copy(self, source: HubSource, dest: Path) -> Path:
        """The mirrored files of `source`, verified, in `dest` (or in place for a local cache)."""
        got = stored.fetch(self.store, source.entry, dest, self.concurrency, label=source.setting)
        if got is None:
            raise WorldError(
                f"{source.setting}: the mirror of {source.repo.label} at {self.store.uri}{source.entry} is incomplete "
                "or corrupt; a later attempt mirrors it again."
            )
        return got[0]


def place(folder: Path, dest: Path) -> None:
    """`dest` holding the files of `folder` (hard links where possible; links followed)."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(folder, dest, copy_function=link_or_copy, ignore=shutil.ignore_patterns(".cache"))


def link_or_copy(src: str | Path, dst: str | Path) -> None:
    """A hard link to `src`'s file (symbolic links followed), or a copy across file systems."""
    try:
        os.link(os.path.realpath(src), dst)
    except OSError:
        shutil.copyfile(src, dst)


# -- the model --------------------------------------------------------------------------------------


def model_source(settings, mirror: Mirror, work: Path) -> HubSource | None:
    """FT_MODEL's Hub source, mirrored (main process); None for an S3 prefix or a local folder."""
    if hub.model_source(settings.model, os.path.exists) != "hub":
        return None
    repo = hub.parse_model(settings.model)

    def select(files: dict[str, int]) -> list[str]:
        return model_files(files, settings.allow_pickle_weights, repo.label)

    return mirror.source(repo, "FT_MODEL", select, work / "model")


def fetch_model(settings, source: HubSource | None, mirror: Mirror, work: Path) -> Path:
    """A local folder holding the base model (each machine's first process)."""
    if source is None:
        return modeling.fetch_model(settings.model, work, settings.transfer_concurrency)
    return mirror.local_copy(source, work / "model")


# -- the data ---------------------------------------------------------------------------------------


def data_sources(settings, mirror: Mirror, work: Path) -> dict[str, DataSource]:
    """FT_TRAIN_DATA and FT_EVAL_DATA (when set), each identified by its content: a Hub data set
    by its commit and files (mirrored first), S3 objects by their ETags, local files by sha256."""
    out = {}
    for setting, uri in (("FT_TRAIN_DATA", settings.train_data), ("FT_EVAL_DATA", settings.eval_data)):
        if not uri:
            continue
        if hub.is_hub_data(uri):
            repo = hub.parse_data(uri, setting)

            def select(files: dict[str, int], repo=repo, setting=setting) -> list[str]:
                return data_files(files, repo.path, repo.label, setting)

            source = mirror.source(repo, setting, select, hub_copy(work, repo))
            identity = {"hub": source.repo.repo_id, "commit": source.commit, "files": list(source.files)}
            out[setting] = DataSource(setting, uri, source, identity)
        else:
            out[setting] = DataSource(setting, uri, None, identify(uri, setting, settings.transfer_concurrency))
    return out


def identify(uri: str, setting: str, concurrency: int) -> dict:
    """What identifies the content at an S3 or local `uri`: {relative path: ETag and size, or sha256}."""
    if storage.is_s3(uri):
        _, _, _, objects = storage.s3_objects(uri, concurrency, setting)
        return {rel: f"{obj['etag']}:{obj['size']}" for rel, obj in sorted(objects.items())}
    path = Path(uri).expanduser()
    if not path.exists():
        raise UserError(f"{setting}: {uri} does not exist.")
    files = (
        [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    )
    return {(p.name if p == path else p.relative_to(path).as_posix()): sha256(p) for p in files}


def hub_copy(work: Path, repo: hub.HubRepo) -> Path:
    return work / repo_folder(repo)


def local_data(settings, sources: dict[str, DataSource], mirror: Mirror, work: Path):
    """`settings` with each Hub data set replaced by a local folder that holds exactly the files
    chosen from it (downloaded from the mirror); S3 and local data are left to data.load_splits."""
    update = {}
    for setting, source in sources.items():
        if source.hub is None:
            continue
        copy = mirror.local_copy(source.hub, hub_copy(work, source.hub.repo))
        view = work / "data" / f"{setting.lower()}-hub"
        shutil.rmtree(view, ignore_errors=True)
        for rel in source.hub.files:
            target = storage.safe_destination(view, rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            link_or_copy(copy / rel, target)
        update[setting[len("FT_") :].lower()] = str(view)
    return settings.model_copy(update=update) if update else settings


def model_card(folder: Path, source: HubSource | None) -> None:
    """A README.md for the published model that names its base (a Hub model: with the commit)."""
    if source is None or (folder / "README.md").exists():
        return
    (folder / "README.md").write_text(
        "---\n"
        f"base_model: {source.repo.repo_id}\n"
        "library_name: transformers\n"
        "---\n\n"
        f"Fine-tuned with finetune from [{source.repo.repo_id}](https://huggingface.co/{source.repo.repo_id}), "
        f"revision `{source.repo.revision}`, commit `{source.commit}`.\n"
    )
