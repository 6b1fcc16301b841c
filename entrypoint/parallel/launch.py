"""Several training processes: one per GPU, on one machine or several (SageMaker hosts, AWS Batch
multi-node parallel jobs), started by torch's own launcher (`torch.distributed.run`, i.e. torchrun).

`finetune train` decides how to run with `launch_plan` (pure). With one process it simply runs the
job. Otherwise it becomes the launcher: torchrun starts the processes, each of which runs the
normal job (RANK, LOCAL_RANK, WORLD_SIZE set); the launcher forwards SIGTERM/SIGINT to them and
exits with their exit code (see collectives.py for how the processes keep in step).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import threading
from collections.abc import Callable, Mapping, Sequence

from entrypoint.config.platform import Runtime
from entrypoint.errors import ExitCode, Interrupted, WorkersFailed
from entrypoint.parallel import cpus

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
        return [
            "--nnodes",
            str(self.nnodes),
            "--node-rank",
            str(self.node_rank),
            "--master-addr",
            str(self.master_addr),
            "--master-port",
            str(self.master_port),
            "--nproc-per-node",
            str(self.nproc_per_node),
        ]

    def describe(self) -> str:
        where = (
            "this machine"
            if self.nnodes == 1
            else f"node {self.node_rank} of {self.nnodes} (master {self.master_addr}:{self.master_port})"
        )
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
        if runtime.current_host is None:
            raise ValueError(f"SageMaker names the job's hosts {hosts} but not this one (current_host)")
        return Nodes(len(hosts), hosts.index(runtime.current_host), hosts[0])
    num_nodes = runtime.num_nodes or 1
    if runtime.platform == "batch" and num_nodes > 1:
        # Rank 0 must be the main node (it hosts the rendezvous); node indexes may start anywhere.
        # The main node has no AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS: it is the master itself.
        if runtime.node_index is None or runtime.main_node_index is None:
            raise ValueError(
                "AWS Batch multi-node job without AWS_BATCH_JOB_NODE_INDEX or AWS_BATCH_JOB_MAIN_NODE_INDEX"
            )
        rank = (runtime.node_index - runtime.main_node_index) % num_nodes
        return Nodes(num_nodes, rank, "127.0.0.1" if rank == 0 else runtime.main_node_address)
    return Nodes(1, 0, None)


def launch_plan(
    runtime: Runtime, num_processes: int | None, gpu_count: int, environ: Mapping[str, str]
) -> LaunchPlan | None:
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


INTERRUPTED_CODES = (int(ExitCode.INTERRUPTED), int(ExitCode.INTERRUPTED_SIGINT))


def exit_code(failures: Mapping[int, tuple[float, int]], stop_received: bool = True) -> int:
    """The job's exit code from its failed processes, {global rank: (time, exit code)}: the first
    failure (rank order on a tie) is the cause, the others usually followed from it. A process
    killed by signal N counts as 128 + N, as a shell reports it.

    When the launcher itself received no stop request (`stop_received` False), a process that
    ended as interrupted (143/130) was stopped by torchrun, which SIGTERMs the others once one
    fails: a consequence, never the cause, whatever the times say (torchrun's are whole seconds,
    so they tie, and a process stopped after the failure may be reported at the same time)."""
    if not failures:
        return 0
    codes = {rank: (at, 128 - code if code < 0 else code) for rank, (at, code) in failures.items()}
    causes = codes if stop_received else {r: v for r, v in codes.items() if v[1] not in INTERRUPTED_CODES}
    causes = causes or codes  # only interrupted processes: a stop the launcher did not see (e.g. a spot notice)
    rank = min(causes, key=lambda r: (causes[r][0], r))
    return causes[rank][1]


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def launch(plan: LaunchPlan) -> None:
    """Run the job as `plan` says (torchrun in this process) and end as its processes did."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    from entrypoint.durability import interruption

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
    os.environ.update(cpus.launcher_environment(os.environ))  # each process sizes its threads (cpus.py)
    try:
        run(parse_args(options))
    except ChildFailedError as exc:
        failures = {rank: (f.timestamp, f.exitcode) for rank, f in exc.failures.items()}
        code = exit_code(failures, stop_received=stop.is_set())
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
