"""The job's local scratch folders under FT_WORK_DIR."""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from .errors import UserError


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
        raise UserError(f"FT_WORK_DIR: cannot use {root} as scratch space ({exc}). Point FT_WORK_DIR at a writable folder.") from exc
    return ws


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()
