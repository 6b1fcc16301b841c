"""Checkpoints in a listing, as pure decisions: which are complete, which is the newest good one,
which retention removes. No I/O except hashing a local file.

Layout at FT_CHECKPOINT_URI:
    _attempts/000001                          one per run attempt (fencing, see attempts.py)
    checkpoint-000000050-g0001/...            the Trainer's checkpoint files
    checkpoint-000000050-g0001/finetune-manifest.json   size + sha256 of every file, written last
A checkpoint is complete only when its manifest exists and every listed file has the listed size;
its checksums are verified after download. Anything else is skipped with a warning, never loaded.

A job on several machines writes one checkpoint from all of them: each machine uploads the files its
processes wrote (its ranks' RNG states, optimizer shards), and world rank 0 commits one manifest
listing every machine's files once all of them have reported theirs (see sync.py). A machine's
part that never arrived leaves the checkpoint without a manifest: incomplete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import time
from pathlib import Path

MANIFEST = "finetune-manifest.json"
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
        match = NAME_RE.match(folder)
        assert match is not None  # group() keeps only checkpoint folder names
        step, generation = (int(x) for x in match.groups())
        found.append(Checkpoint(folder, step, generation, files, manifests.get(folder)))
    return sorted(found, key=lambda c: (c.step, c.generation), reverse=True)


def latest_complete(checkpoints: list[Checkpoint]) -> Checkpoint | None:
    return next((c for c in checkpoints if c.complete), None)


def to_delete(
    checkpoints: list[Checkpoint], keep_last: int, best_step: int | None, generation: int | None = None
) -> list[Checkpoint]:
    """The checkpoints retention removes: complete ones beyond the newest `keep_last` (the best
    one excepted), and incomplete leftovers older than the newest complete one. Nothing at all
    while no checkpoint is complete. Given the deleting attempt's `generation`, only checkpoints
    of that attempt and earlier ones: never those of a newer attempt."""
    complete = [c for c in checkpoints if c.complete]
    if not complete:
        return []
    keep = {c.name for c in complete[:keep_last]}
    if best_step is not None:
        keep |= {c.name for c in complete if c.step == best_step}
    newest = complete[0]
    doomed = [c for c in complete if c.name not in keep]
    doomed += [c for c in checkpoints if not c.complete and (c.step, c.generation) < (newest.step, newest.generation)]
    return [c for c in doomed if generation is None or c.generation <= generation]


def with_files_elsewhere(checkpoints: list[Checkpoint], elsewhere: dict[str, dict[str, int]]) -> list[Checkpoint]:
    """The checkpoints as the whole job holds them: the files listed here plus those other machines
    hold of each ({checkpoint: {relative path: size}}). On SageMaker with several instances each
    instance's /opt/ml/checkpoints holds its own part only (the platform syncs them all into one S3
    prefix), so world rank 0 judges completeness for retention with the parts the others reported."""
    return [
        dataclasses.replace(c, files={**elsewhere[c.name], **c.files}) if c.name in elsewhere else c
        for c in checkpoints
    ]


def parts_to_delete(checkpoints: list[Checkpoint], keep: list[str], generation: int) -> list[Checkpoint]:
    """Another machine's side of world rank 0's retention, in the machine's own checkpoint folder:
    every part older than the newest complete checkpoint (the first name in `keep`, which lists the
    complete checkpoints retention kept) that is not kept, of this attempt or an earlier one."""
    if not keep:
        return []
    match = NAME_RE.match(keep[0])
    if match is None:
        return []
    newest = tuple(int(x) for x in match.groups())
    return [
        c for c in checkpoints if c.name not in keep and (c.step, c.generation) < newest and c.generation <= generation
    ]


# Files that belong to one process of a job, by world rank: the Trainer's RNG state of each process,
# DeepSpeed ZeRO's optimizer partitions. Every other file is shared by all processes.
RANK_FILE_RE = re.compile(r"(?:^|/)(?:rng_state_(\d+)\.pth|(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_\d+_optim_states\.pt)$")


def rank_of(rel: str) -> int | None:
    """The world rank a checkpoint file belongs to, or None for a file every process reads."""
    match = RANK_FILE_RE.search(rel)
    return None if match is None else int(match.group(1) or match.group(2))


def needed_by(rel: str, ranks: tuple[int, ...] | None) -> bool:
    """Whether a machine whose processes have world ranks `ranks` needs `rel` to resume (None: all files)."""
    rank = rank_of(rel)
    return ranks is None or rank is None or rank in ranks


def merge_parts(parts: dict[int, dict[str, dict]]) -> dict[str, dict]:
    """One manifest's files from each machine's part ({node: {rel: {size, sha256}}}). A file two
    machines both wrote (FT_SAVE_ON_EACH_NODE) must be the same file; ValueError otherwise."""
    merged: dict[str, dict] = {}
    for node in sorted(parts):
        for rel, entry in parts[node].items():
            if rel in merged and merged[rel] != entry:
                raise ValueError(f"{rel} differs between the machines' parts (node {node} and an earlier one)")
            merged[rel] = entry
    return merged


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
