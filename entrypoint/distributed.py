"""Several training processes: one per GPU, on one machine or several (SageMaker hosts, AWS Batch
multi-node parallel jobs), started by torch's own launcher (`torch.distributed.run`, i.e. torchrun).

`finetune train` decides how to run with `launch_plan` (pure). With one process it simply runs the
job. Otherwise it becomes the launcher: torchrun starts the processes, each of which runs the
normal job (RANK, LOCAL_RANK, WORLD_SIZE set); the launcher forwards SIGTERM/SIGINT to them and
exits with their exit code. Inside the job, the helpers below keep the processes in step: world
rank 0 alone writes to the checkpoint and output locations, each machine's first process alone
downloads, and a stop request seen by any process stops them all at the same step.
"""
from __future__ import annotations

import atexit
import contextlib
import dataclasses
import fcntl
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from transformers import TrainerCallback

from .errors import ExitCode, FinetuneError, Interrupted, UserError
from .runtime import Runtime

log = logging.getLogger(__name__)

DEFAULT_MASTER_PORT = 29500
# torchrun's variables: a process that has them was started by a launcher and runs the job.
WORKER_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE")


@dataclasses.dataclass(frozen=True)
class LaunchPlan:
    """How torchrun starts this machine's share of the job."""

    nproc_per_node: int
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str | None = None  # None: one machine, a rendezvous on a free local port
    master_port: int = DEFAULT_MASTER_PORT
    environment: tuple[tuple[str, str], ...] = ()  # set for the processes, besides torchrun's own

    def torchrun_args(self) -> list[str]:
        """The `torchrun` options (before `-m entrypoint train`)."""
        if self.nnodes == 1:
            return ["--standalone", "--nnodes", "1", "--nproc-per-node", str(self.nproc_per_node)]
        return ["--nnodes", str(self.nnodes), "--node-rank", str(self.node_rank), "--master-addr", str(self.master_addr),
                "--master-port", str(self.master_port), "--nproc-per-node", str(self.nproc_per_node)]

    def describe(self) -> str:
        where = "this machine" if self.nnodes == 1 else f"node {self.node_rank} of {self.nnodes} (master {self.master_addr}:{self.master_port})"
        return f"{self.nproc_per_node} processes on {where}"


@dataclasses.dataclass(frozen=True)
class Nodes:
    count: int
    rank: int  # 0 on the machine that hosts the rendezvous
    master_addr: str | None


def nodes(runtime: Runtime) -> Nodes:
    """This machine's place among the job's machines."""
    if runtime.platform == "sagemaker" and len(runtime.hosts) > 1:
        # Every host sorts the same list, so all agree on ranks and on the master (algo-1, ...).
        hosts = sorted(runtime.hosts)
        return Nodes(len(hosts), hosts.index(runtime.current_host), hosts[0])
    if runtime.platform == "batch" and (runtime.num_nodes or 1) > 1:
        # Rank 0 must be the main node (it hosts the rendezvous); node indexes may start anywhere.
        # The main node has no AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS: it is the master itself.
        rank = (runtime.node_index - runtime.main_node_index) % runtime.num_nodes
        return Nodes(runtime.num_nodes, rank, "127.0.0.1" if rank == 0 else runtime.main_node_address)
    return Nodes(1, 0, None)


def launch_plan(runtime: Runtime, num_processes: int | None, gpu_count: int, environ: Mapping[str, str]) -> LaunchPlan | None:
    """How to run: None when this process should run the job itself (one process in all, or
    already started by torchrun); else the launch of `num_processes` (default: one per visible
    GPU, at least 1) processes on this machine, joined with the job's other machines."""
    if all(name in environ for name in WORKER_VARIABLES):
        return None
    per_node = num_processes or max(gpu_count, 1)
    where = nodes(runtime)
    if per_node == 1 and where.count == 1:
        return None
    port = int(environ.get("MASTER_PORT") or DEFAULT_MASTER_PORT)
    # Without a GPU, accelerate (and so the Trainer) runs DDP only when told the CPU is meant;
    # otherwise each process would train a model of its own.
    cpu = (("ACCELERATE_USE_CPU", "true"),) if gpu_count == 0 else ()
    return LaunchPlan(per_node, where.count, where.rank, where.master_addr, port, cpu)


def exit_code(failures: Mapping[int, tuple[float, int]]) -> int:
    """The job's exit code from its failed processes, {global rank: (time, exit code)}: the first
    failure (rank order on a tie) is the cause, the others usually followed from it. A process
    killed by signal N counts as 128 + N, as a shell reports it."""
    if not failures:
        return 0
    rank = min(failures, key=lambda r: (failures[r][0], r))
    code = failures[rank][1]
    return 128 - code if code < 0 else code


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


class WorkersFailed(FinetuneError):
    """A training process failed; its own log lines above say why."""

    def __init__(self, code: int):
        self.exit_code = code
        super().__init__(f"a training process exited with code {code}; its log lines above say why")


def launch(plan: LaunchPlan) -> None:
    """Run the job as `plan` says (torchrun in this process) and end as its processes did."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    from . import interruption

    log.info("starting %s: torchrun %s -m entrypoint train", plan.describe(), " ".join(plan.torchrun_args()))
    stop = interruption.StopRequest()
    interruption.install_signal_handlers(stop)
    finished = threading.Event()
    forwarder = threading.Thread(target=forward_stop, args=(stop, finished), name="forward-stop", daemon=True)
    forwarder.start()
    # torchrun's own SIGTERM/SIGINT handling kills the processes after 30 s and loses their exit
    # codes; ours (above) forwards the signal and waits for the checkpoint to become durable.
    options = [*plan.torchrun_args(), "--signals-to-handle", "SIGHUP,SIGQUIT", "-m", "entrypoint", "train"]
    code = 0
    os.environ.update(plan.environment)  # the processes inherit the launcher's environment
    try:
        run(parse_args(options))
    except ChildFailedError as exc:
        code = exit_code({rank: (f.timestamp, f.exitcode) for rank, f in exc.failures.items()})
    finally:
        finished.set()
    if code in (ExitCode.INTERRUPTED, ExitCode.INTERRUPTED_SIGINT):
        raise Interrupted(stop.reason or "a stop request", ExitCode(code))
    if code:
        raise WorkersFailed(code)


def forward_stop(stop, finished: threading.Event, children: Callable[[], Sequence[int]] | None = None) -> None:
    """Once a stop is requested, send the same signal to every training process (once each),
    including processes that start later, until the launch is over."""
    if children is None:
        import psutil  # installed with accelerate

        children = lambda: [p.pid for p in psutil.Process().children()]  # noqa: E731
    told: set[int] = set()
    while not finished.is_set():
        if not stop.wait(0.2):
            continue
        for pid in children():
            if pid not in told:
                told.add(pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, stop.signal or signal.SIGTERM)
        finished.wait(0.2)


# Inside the job: no-ops when it runs as a single process.

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
        except Exception:  # noqa: BLE001 - the job's outcome is decided; its exit code stands
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
        raise UserError(f"{args.world_size} processes would each train a model of their own ({args.parallel_mode}): "
                        "on a machine without GPUs set FT_USE_CPU=true (finetune's own launcher does this itself).")


def is_main() -> bool:
    dist = _dist()
    return dist is None or dist.get_rank() == 0


def per_process(folder: Path) -> Path:
    """`folder` for the main process, a sibling of its own for the others (a collective save may
    have them write something, which must not land in the main process's folder)."""
    return folder if is_main() else folder.with_name(f"{folder.name}-rank{_ranks()[0]}")


class FailedElsewhere(FinetuneError):
    """Another process failed at a step all processes share; this one ends the same way."""

    def __init__(self, message: str, code: int):
        self.exit_code = code
        super().__init__(message)


def _attempt(fn: Callable, args: tuple) -> tuple[str, Any]:
    try:
        return "ok", fn(*args)
    except FinetuneError as exc:
        return "failed", (str(exc), int(exc.exit_code), exc)
    except Exception as exc:  # noqa: BLE001 - re-raised below; the other processes stop too
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


class AllSaved(TrainerCallback):
    """Every process has written its part of a checkpoint (RNG state) before the main process
    hands the folder to the uploader: the Trainer does not wait for them itself."""

    def on_save(self, args, state, control, **kwargs):
        dist = _dist()
        if dist is not None:
            dist.barrier()
        return control
