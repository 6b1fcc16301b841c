"""Inside a job of several processes: the helpers that keep them in step. World rank 0 alone
writes to the checkpoint and output locations, each machine's first process alone downloads, a
failure on one process ends them all with its exit code, and a stop request seen by any process
stops them all at the same step. Each is a no-op when the job runs as a single process.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from entrypoint.errors import ExitCode, FailedElsewhere, FinetuneError, UserError

log = logging.getLogger(__name__)


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def close_at_exit() -> None:
    """Destroy the process group (once there is one) while the interpreter is still whole: left
    to interpreter shutdown, gloo's worker threads can abort a process that finished its work
    ("terminate called without an active exception", exit 134), and the job would fail."""
    atexit.register(_close)


def _close() -> None:
    dist = _dist()
    if dist is not None:
        try:
            dist.destroy_process_group()
        except Exception:
            log.debug("could not destroy the process group", exc_info=True)


def _ranks() -> tuple[int, int]:
    """(world rank, local rank) of this process."""
    from accelerate import PartialState

    state = PartialState()
    return state.process_index, state.local_process_index


def require_data_parallel(args) -> None:
    """Several processes must train one model together (DDP, DeepSpeed, FSDP), never one each."""
    from transformers.training_args import ParallelMode

    if _dist() is not None and args.parallel_mode != ParallelMode.DISTRIBUTED:
        raise UserError(
            f"{args.world_size} processes would each train a model of their own ({args.parallel_mode}): "
            "on a machine without GPUs set FT_USE_CPU=true (finetune's own launcher does this itself)."
        )


def is_main() -> bool:
    dist = _dist()
    return dist is None or dist.get_rank() == 0


def per_process(folder: Path) -> Path:
    """`folder` for the main process, a sibling of its own for the others (a collective save may
    have them write something, which must not land in the main process's folder)."""
    return folder if is_main() else folder.with_name(f"{folder.name}-rank{_ranks()[0]}")


def _attempt(fn: Callable, args: tuple) -> tuple[str, Any]:
    try:
        return "ok", fn(*args)
    except FinetuneError as exc:
        return "failed", (str(exc), int(exc.exit_code), exc)
    except Exception as exc:
        return "failed", (f"unexpected error: {exc!r}", int(ExitCode.UNEXPECTED), exc)


def _unwrap(outcome: tuple[str, Any], mine: bool) -> Any:
    kind, value = outcome
    if kind == "ok":
        return value
    message, code, exc = value
    if mine:
        raise exc
    raise FailedElsewhere(f"another process failed: {message}", code)


def _portable(outcome: tuple[str, Any]) -> tuple[str, Any]:
    """The outcome without the exception object (not every exception pickles)."""
    kind, value = outcome
    return (kind, value) if kind == "ok" else (kind, (value[0], value[1], None))


def on_main(fn: Callable, *args) -> Any:
    """fn(*args) on world rank 0 only; its result (or its failure) on every process."""
    dist = _dist()
    if dist is None:
        return fn(*args)
    outcome = _attempt(fn, args) if dist.get_rank() == 0 else None
    box = [_portable(outcome) if outcome else None]
    dist.broadcast_object_list(box, src=0)
    return _unwrap(outcome if outcome else box[0], outcome is not None)


def on_local_main(fn: Callable, *args) -> Any:
    """fn(*args) on each machine's first process only (a download into the machine's work
    folder); its result (or its failure) on the machine's other processes, which wait for it."""
    dist = _dist()
    if dist is None:
        return fn(*args)
    rank, local_rank = _ranks()
    dist.barrier()  # every process is past its own preparations before the download starts
    outcome = _attempt(fn, args) if local_rank == 0 else None
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, _portable(outcome) if outcome else None)
    # torchrun numbers each machine's processes consecutively, its first process first.
    return _unwrap(outcome if outcome else everyone[rank - local_rank], outcome is not None)


def in_turn(fn: Callable, *args) -> Any:
    """fn(*args) on each process of a machine in turn, the machine's first process first (so
    downloads into the shared work folder never overlap); a failure in any turn ends them all."""
    dist = _dist()
    if dist is None:
        return fn(*args)
    rank, local_rank = _ranks()
    local_ranks: list = [None] * dist.get_world_size()
    dist.all_gather_object(local_ranks, local_rank)
    result = None
    for turn in range(max(local_ranks) + 1):
        outcome = _attempt(fn, args) if local_rank == turn else None
        everyone: list = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, _portable(outcome) if outcome else None)
        failed = next((o for o in everyone if o is not None and o[0] == "failed"), None)
        if outcome is not None and outcome[0] == "failed":
            _unwrap(outcome, True)
        if failed:
            _unwrap(failed, False)
        if outcome is not None:
            result = outcome[1]
    return result


def barrier() -> None:
    """Wait until every process is here."""
    dist = _dist()
    if dist is not None:
        dist.barrier()


def all_max(flags: Sequence[bool]) -> list[bool]:
    """Each flag set on any process (an all-reduce of one small tensor)."""
    dist = _dist()
    if dist is None:
        return list(flags)
    import torch

    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    tensor = torch.tensor([int(f) for f in flags], dtype=torch.int32, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return [bool(v) for v in tensor.tolist()]


def gather_if_any(items: list) -> list:
    """Every process's `items`, concatenated in rank order, on every process: one small all-reduce
    when no process has any, an all-gather when one has."""
    dist = _dist()
    if dist is None:
        return list(items)
    if not all_max([bool(items)])[0]:
        return []
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, list(items))
    return [item for part in everyone for item in part]


@dataclasses.dataclass(frozen=True)
class NodeLayout:
    """This machine's place in the job: which machine it is, of how many, and its processes' world ranks."""

    index: int  # 0: the machine of world rank 0
    count: int
    ranks: tuple[int, ...]
    local_main: bool  # this process is the machine's first


def node_layout() -> NodeLayout:
    """The job's machines, as the processes see them (torchrun numbers each machine's processes
    consecutively, its first process first: a machine is known by its first process's rank)."""
    dist = _dist()
    if dist is None:
        return NodeLayout(0, 1, (0,), True)
    rank, local_rank = _ranks()
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, (rank, rank - local_rank))
    firsts = sorted({first for _, first in everyone})
    mine = rank - local_rank
    ranks = tuple(sorted(r for r, first in everyone if first == mine))
    return NodeLayout(firsts.index(mine), len(firsts), ranks, local_rank == 0)
