"""How many CPUs the job may use, and how its threads and processes share them.

In a container torch sees the host's cores, not the job's CPU budget: on a shared machine its
default thread count oversubscribes the CPUs (5–40× slower training measured on 2 busy cores). The
budget is the smallest of: the cgroup quota (v2 `cpu.max`, v1 CFS quota/period); on AWS Batch the
container's CPU limit from the ECS task metadata endpoint (Batch gives CPU shares, not a quota, so
the cgroup does not tell the job's vCPUs); the CPU affinity (on SageMaker the whole instance is the
job's). The job's processes on the machine share it; the user's OMP_NUM_THREADS is kept as it is.

`cpu_budget` and `thread_plan` decide (pure); `budget_here` reads this machine and `apply` sets
torch's threads once, early in the job. Nothing heavy is imported here: the launcher uses it too.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
# ECS container metadata: `Limits.CPU` in CPU units, 1024 per vCPU (0: no limit).
# https://docs.aws.amazon.com/AmazonECS/latest/developerguide/task-metadata-endpoint-v4.html
ECS_METADATA_VARIABLE = "ECS_CONTAINER_METADATA_URI_V4"
ECS_CPU_UNITS_PER_VCPU = 1024
ECS_TIMEOUT_S = 1.0
# torchrun sets OMP_NUM_THREADS=1 for its processes when the launcher's environment has none; our
# launcher sets it first and says so here, so the processes size their threads themselves.
LAUNCHER_OMP_VARIABLE = "FINETUNE_LAUNCHER_OMP_NUM_THREADS"
MAX_DATALOADER_WORKERS = 4


class CpuBudget(NamedTuple):
    cpus: int  # on this machine, for all the job's processes on it
    source: str  # what set it, for the log line


@dataclasses.dataclass(frozen=True)
class ThreadPlan:
    intra_op_threads: int  # torch's threads in each process
    dataloader_workers: int  # per training process
    tokenize_processes: int  # at most, while one process tokenizes for the machine
    set_threads: bool  # False: OMP_NUM_THREADS was the user's, torch keeps it
    reasons: tuple[str, str, str]  # why each of the three, where it is not the budget's share

    def describe(self, budget: CpuBudget, local_processes: int) -> str:
        processes = f"{local_processes} process{'es' if local_processes > 1 else ''}"
        threads, workers, tokenize = (f" ({reason})" if reason else "" for reason in self.reasons)
        return (
            f"CPU budget {budget.cpus} ({budget.source}) for {processes}: {self.intra_op_threads} intra-op "
            f"threads{threads}, {self.dataloader_workers} data loader workers{workers}, tokenization in up to "
            f"{self.tokenize_processes} processes{tokenize}; OMP_NUM_THREADS, FT_DATALOADER_NUM_WORKERS and "
            "FT_PREPROCESSING_NUM_WORKERS change them"
        )


def cpu_budget(
    affinity: int,
    cpu_max: str | None = None,
    cfs: tuple[int, int] | None = None,
    batch_cpu_units: int | None = None,
    platform: str = "local",
) -> CpuBudget:
    """The job's CPUs on this machine: the smallest of its CPU affinity, the cgroup quota (v2
    `cpu.max`, e.g. '200000 100000' for two CPUs or 'max 100000' for none, or v1's (quota,
    period) in µs) and AWS Batch's container limit in CPU units; at least 1."""
    limits: list[tuple[float, str]] = []
    if cpu_max:
        quota, _, period = cpu_max.strip().partition(" ")
        if quota != "max" and period:
            limits.append((int(quota) / int(period), f"cgroup cpu.max {quota}/{period}"))
    elif cfs and cfs[0] > 0 and cfs[1] > 0:
        limits.append((cfs[0] / cfs[1], f"cgroup cfs quota {cfs[0]}/{cfs[1]} µs"))
    if batch_cpu_units and batch_cpu_units > 0:
        limits.append(
            (batch_cpu_units / ECS_CPU_UNITS_PER_VCPU, f"AWS Batch container limit {batch_cpu_units} CPU units")
        )
    whole = "the SageMaker instance's CPUs (affinity)" if platform == "sagemaker" else "CPU affinity"
    limits.append((float(affinity), whole))
    cpus, source = min(limits, key=lambda limit: limit[0])  # the first on a tie: the quota before the affinity
    return CpuBudget(max(1, int(cpus)), source)


def user_threads(environ: Mapping[str, str]) -> int | None:
    """OMP_NUM_THREADS as the user set it (not our launcher), else None; '4,2' (nested levels) is 4."""
    value = environ.get("OMP_NUM_THREADS", "").strip()
    if not value or value == environ.get(LAUNCHER_OMP_VARIABLE):
        return None
    first = value.split(",")[0].strip()
    return int(first) if first.isdigit() and int(first) > 0 else 1


def local_processes(environ: Mapping[str, str]) -> int:
    """The job's processes on this machine (torchrun's LOCAL_WORLD_SIZE; 1 without torchrun)."""
    value = environ.get("LOCAL_WORLD_SIZE", "").strip()
    return max(1, int(value)) if value.isdigit() else 1


def thread_plan(
    budget: CpuBudget,
    processes: int,
    cuda: bool,
    environ: Mapping[str, str],
    dataloader_workers: int | None = None,
    tokenize_processes: int | None = None,
) -> ThreadPlan:
    """How `processes` training processes share `budget`; `dataloader_workers` and
    `tokenize_processes` are the user's settings (FT_DATALOADER_NUM_WORKERS,
    FT_PREPROCESSING_NUM_WORKERS), which win."""
    share = max(1, budget.cpus // max(1, processes))
    omp = user_threads(environ)
    threads, threads_why = (share, "") if omp is None else (omp, f"OMP_NUM_THREADS={environ['OMP_NUM_THREADS']}, kept")
    if dataloader_workers is not None:
        workers, workers_why = dataloader_workers, f"FT_DATALOADER_NUM_WORKERS={dataloader_workers}"
    elif cuda:
        workers, workers_why = max(0, min(MAX_DATALOADER_WORKERS, share - 1)), ""  # a CPU left to the training loop
    else:
        workers, workers_why = 0, "CPU training: workers would take the compute threads' CPUs"
    tokenize_why = f"FT_PREPROCESSING_NUM_WORKERS={tokenize_processes}" if tokenize_processes else ""
    return ThreadPlan(
        intra_op_threads=threads,
        dataloader_workers=workers,
        tokenize_processes=tokenize_processes or budget.cpus,  # the others wait while one machine's process tokenizes
        set_threads=omp is None,
        reasons=(threads_why, workers_why, tokenize_why),
    )


def launcher_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """What the torchrun launcher adds to its processes' environment: without the user's
    OMP_NUM_THREADS, torchrun's default of 1 (set here, and marked as ours, so each process sizes
    its threads from the budget instead of keeping it)."""
    if "OMP_NUM_THREADS" in environ:
        return {}
    return {"OMP_NUM_THREADS": "1", LAUNCHER_OMP_VARIABLE: "1"}


# -- effects ------------------------------------------------------------------------------------


def read_cgroup(root: Path = CGROUP_ROOT) -> tuple[str | None, tuple[int, int] | None]:
    """The cgroup's CPU quota: v2 `cpu.max` text, else v1's (quota, period); (None, None) without."""
    try:
        return (root / "cpu.max").read_text(), None
    except OSError:
        pass
    for v1 in (root / "cpu", root / "cpu,cpuacct"):
        try:
            return None, (int((v1 / "cpu.cfs_quota_us").read_text()), int((v1 / "cpu.cfs_period_us").read_text()))
        except (OSError, ValueError):
            continue
    return None, None


def batch_cpu_units(environ: Mapping[str, str], timeout_s: float = ECS_TIMEOUT_S) -> int | None:
    """The container's CPU limit from the ECS task metadata endpoint (AWS Batch on ECS), or None."""
    uri = environ.get(ECS_METADATA_VARIABLE)
    if not uri:
        return None
    try:
        with urllib.request.urlopen(uri, timeout=timeout_s) as response:
            units = json.load(response).get("Limits", {}).get("CPU")
        return int(units) if units else None
    except (OSError, ValueError, AttributeError, TypeError) as exc:  # best effort: the affinity stands in
        log.debug("no CPU limit from the ECS task metadata endpoint %s: %s", uri, exc)
        return None


def available_cpus(cgroup_root: Path = CGROUP_ROOT) -> int:
    """This process's CPU affinity capped by its cgroup quota."""
    cpu_max, cfs = read_cgroup(cgroup_root)
    return cpu_budget(len(os.sched_getaffinity(0)), cpu_max, cfs).cpus


def budget_here(
    environ: Mapping[str, str], platform: str, cgroup_root: Path = CGROUP_ROOT, affinity: int | None = None
) -> CpuBudget:
    """cpu_budget for this process: its affinity, its cgroup and, outside SageMaker, the ECS limit."""
    cpu_max, cfs = read_cgroup(cgroup_root)
    units = None if platform == "sagemaker" else batch_cpu_units(environ)
    return cpu_budget(affinity or len(os.sched_getaffinity(0)), cpu_max, cfs, units, platform)


_applied: ThreadPlan | None = None


def apply(
    environ: Mapping[str, str],
    platform: str,
    cuda: bool,
    dataloader_workers: int | None = None,
    tokenize_processes: int | None = None,
    cgroup_root: Path = CGROUP_ROOT,
) -> ThreadPlan:
    """Size torch's threads to the job's CPU budget, before any parallel work; logs the plan."""
    import torch

    global _applied
    budget = budget_here(environ, platform, cgroup_root)
    processes = local_processes(environ)
    plan = thread_plan(budget, processes, cuda, environ, dataloader_workers, tokenize_processes)
    if plan.set_threads:
        torch.set_num_threads(plan.intra_op_threads)
        try:  # only before any inter-op parallel work (and once); a later call raises
            torch.set_num_interop_threads(plan.intra_op_threads)
        except RuntimeError as exc:
            log.debug("torch inter-op threads left at %d: %s", torch.get_num_interop_threads(), exc)
    log.info(plan.describe(budget, processes))
    _applied = plan
    return plan


def apply_for(environ: Mapping[str, str], runtime, settings) -> ThreadPlan:
    """`apply` for the job: its platform, this machine's CUDA, the user's worker settings."""
    import torch

    return apply(
        environ,
        runtime.platform,
        torch.cuda.is_available(),
        getattr(settings, "dataloader_num_workers", None),
        getattr(settings, "preprocessing_num_workers", None),
    )


def tokenize_cpus() -> int:
    """The CPUs tokenization may use: the applied plan's, else this process's quota (tests, `check`)."""
    return _applied.tokenize_processes if _applied is not None else available_cpus()
