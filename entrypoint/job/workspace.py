"""The job's local scratch folders under FT_WORK_DIR."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import shutil
from collections.abc import Iterator
from pathlib import Path

from entrypoint.errors import UserError


@dataclasses.dataclass(frozen=True)
class Workspace:
    root: Path
    checkpoints: Path  # the Trainer's output_dir; restored checkpoints land here too
    staging: Path  # hard-linked snapshots of checkpoints being uploaded
    output: Path  # the final model before it is published


def prepare(work_dir: str) -> Workspace:
    """Fresh checkpoint and staging folders (leftovers of an earlier run are never trusted:
    the durable copy at FT_CHECKPOINT_URI is the truth); downloads are kept."""
    root = Path(work_dir).expanduser()
    ws = Workspace(root=root, checkpoints=root / "checkpoints", staging=root / "staging", output=root / "output")
    try:
        for folder in (ws.checkpoints, ws.staging):
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
    except OSError as exc:
        raise UserError(
            f"FT_WORK_DIR: cannot use {root} as scratch space ({exc}). Point FT_WORK_DIR at a writable folder."
        ) from exc
    return ws


@contextlib.contextmanager
def one_at_a_time(work_dir: str) -> Iterator[None]:
    """A lock held by one process of this machine at a time (before the processes can talk to
    each other): they share FT_WORK_DIR, which workspace.prepare clears."""
    lock = Path(work_dir).expanduser().with_name(Path(work_dir).name + ".lock")
    try:
        handle = lock.open("w")
    except OSError:
        yield  # an unusable work folder: workspace.prepare reports it
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
