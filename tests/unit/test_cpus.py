"""The job's CPU budget (cgroup quota, the AWS Batch container limit, the affinity) and how its
threads and processes share it."""

from __future__ import annotations

import http.server
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import datasets
import pytest

from entrypoint.config import platform
from entrypoint.config.platform import Runtime
from entrypoint.config.settings import load_settings
from entrypoint.job import preprocess
from entrypoint.job.training import Hardware, training_arguments
from entrypoint.parallel import cpus
from entrypoint.parallel.cpus import CpuBudget, thread_plan

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("affinity", "cpu_max", "cfs", "units", "expected"),
    [
        (8, None, None, None, (8, "CPU affinity")),
        (8, "max 100000", None, None, (8, "CPU affinity")),  # cgroup v2, no quota
        (8, "200000 100000", None, None, (2, "cgroup cpu.max 200000/100000")),
        (8, "150000 100000", None, None, (1, "cgroup cpu.max 150000/100000")),  # 1.5 CPUs: one whole
        (2, "400000 100000", None, None, (2, "CPU affinity")),  # the affinity is smaller
        (8, None, (300000, 100000), None, (3, "cgroup cfs quota 300000/100000 µs")),  # cgroup v1
        (8, None, (-1, 100000), None, (8, "CPU affinity")),  # cgroup v1, no quota
        (1, "50000 100000", None, None, (1, "cgroup cpu.max 50000/100000")),  # never fewer than one
        (8, "max 100000", None, 2048, (2, "AWS Batch container limit 2048 CPU units")),
        (8, "300000 100000", None, 2048, (2, "AWS Batch container limit 2048 CPU units")),  # the smaller
        (8, "100000 100000", None, 2048, (1, "cgroup cpu.max 100000/100000")),
        (8, None, None, 0, (8, "CPU affinity")),  # ECS: 0 units is no limit
    ],
)
def test_cpu_budget(affinity, cpu_max, cfs, units, expected):
    assert tuple(cpus.cpu_budget(affinity, cpu_max, cfs, units)) == expected


def cgroup_v2(root: Path, cpu_max: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "cpu.max").write_text(cpu_max + "\n")
    return root


def cgroup_v1(root: Path, quota: int, period: int) -> Path:
    (root / "cpu,cpuacct").mkdir(parents=True)
    (root / "cpu,cpuacct" / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (root / "cpu,cpuacct" / "cpu.cfs_period_us").write_text(f"{period}\n")
    return root


def test_the_budget_read_from_a_cgroup_v2_v1_or_none(tmp_path):
    assert cpus.budget_here({}, "local", cgroup_v2(tmp_path / "v2", "200000 100000"), affinity=8) == (
        2,
        "cgroup cpu.max 200000/100000",
    )
    assert cpus.budget_here({}, "local", cgroup_v2(tmp_path / "none", "max 100000"), affinity=8).cpus == 8
    assert cpus.budget_here({}, "local", cgroup_v1(tmp_path / "v1", 300000, 100000), affinity=8).cpus == 3
    assert cpus.budget_here({}, "local", tmp_path / "missing", affinity=8) == (8, "CPU affinity")
    here = len(os.sched_getaffinity(0))
    assert cpus.available_cpus(cgroup_v2(tmp_path / "one", "100000 100000")) == 1
    assert cpus.available_cpus(tmp_path / "missing") == here


class MetadataEndpoint:
    """The ECS container metadata endpoint (ECS_CONTAINER_METADATA_URI_V4) on 127.0.0.1."""

    def __init__(self, body: object, delay_s: float = 0.0):
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                endpoint.requests.append(self.path)
                time.sleep(delay_s)
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.requests: list[str] = []
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.uri = f"http://127.0.0.1:{self.server.server_address[1]}/v4/container-id"

    def __enter__(self) -> MetadataEndpoint:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


CONTAINER = {"DockerId": "ea32", "Name": "finetune", "Limits": {"CPU": 2048, "Memory": 8192}}


def test_on_aws_batch_the_container_limit_from_the_ecs_metadata_endpoint(tmp_path):
    runtime = platform.detect({"AWS_BATCH_JOB_ID": "j-1"}, {})
    with MetadataEndpoint(CONTAINER) as endpoint:
        environ = {"AWS_BATCH_JOB_ID": "j-1", cpus.ECS_METADATA_VARIABLE: endpoint.uri}
        budget = cpus.budget_here(environ, runtime.platform, cgroup_v2(tmp_path, "max 100000"), affinity=16)
    assert budget == (2, "AWS Batch container limit 2048 CPU units")
    assert endpoint.requests == ["/v4/container-id"]


@pytest.mark.parametrize("body", [{"Limits": {"CPU": 0}}, {"Name": "no limits"}, ["not", "an", "object"]])
def test_a_container_without_a_cpu_limit_keeps_the_affinity(body):
    with MetadataEndpoint(body) as endpoint:
        assert cpus.batch_cpu_units({cpus.ECS_METADATA_VARIABLE: endpoint.uri}) is None
        assert cpus.budget_here({cpus.ECS_METADATA_VARIABLE: endpoint.uri}, "batch", affinity=6) == (6, "CPU affinity")


def test_an_endpoint_that_is_down_or_slow_falls_back_to_the_affinity(tmp_path, caplog):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/v4/x"
    with caplog.at_level(logging.DEBUG, logger=cpus.log.name):
        budget = cpus.budget_here({cpus.ECS_METADATA_VARIABLE: closed}, "batch", tmp_path, affinity=4)
    assert budget == (4, "CPU affinity")
    assert any("no CPU limit from the ECS task metadata endpoint" in r.getMessage() for r in caplog.records)
    with MetadataEndpoint(CONTAINER, delay_s=3.0) as slow:
        started = time.monotonic()
        assert cpus.batch_cpu_units({cpus.ECS_METADATA_VARIABLE: slow.uri}, timeout_s=0.3) is None
        assert time.monotonic() - started < 2.0


def test_on_sagemaker_the_whole_instance_is_the_jobs(tmp_path):
    environ = {"TRAINING_JOB_NAME": "tj", "SM_CURRENT_HOST": "algo-1", "SM_HOSTS": '["algo-1"]'}
    runtime = platform.detect(environ, {})
    assert runtime.platform == "sagemaker"
    with MetadataEndpoint(CONTAINER) as endpoint:  # present or not, not SageMaker's limit: not asked
        environ[cpus.ECS_METADATA_VARIABLE] = endpoint.uri
        budget = cpus.budget_here(environ, runtime.platform, tmp_path / "no-cgroup", affinity=48)
    assert budget == (48, "the SageMaker instance's CPUs (affinity)")
    assert endpoint.requests == []


def test_two_local_processes_share_four_cpus():
    environ = {"LOCAL_WORLD_SIZE": "2"}
    plan = thread_plan(CpuBudget(4, "cgroup"), cpus.local_processes(environ), False, environ)
    assert (plan.intra_op_threads, plan.dataloader_workers, plan.set_threads) == (2, 0, True)
    assert plan.tokenize_processes == 4  # the machine's processes tokenize one at a time
    assert thread_plan(CpuBudget(3, "cgroup"), 2, False, {}).intra_op_threads == 1
    assert thread_plan(CpuBudget(1, "cgroup"), 4, False, {}).intra_op_threads == 1  # never 0


@pytest.mark.parametrize(
    ("budget", "processes", "workers"),
    [(16, 1, 4), (4, 1, 3), (4, 2, 1), (2, 2, 0), (1, 1, 0)],  # on CUDA: one CPU left to the training loop
)
def test_data_loader_workers_on_cuda(budget, processes, workers):
    assert thread_plan(CpuBudget(budget, "x"), processes, True, {}).dataloader_workers == workers
    assert thread_plan(CpuBudget(budget, "x"), processes, False, {}).dataloader_workers == 0  # CPU training


def test_the_users_omp_num_threads_and_worker_settings_are_respected():
    plan = thread_plan(CpuBudget(8, "x"), 1, True, {"OMP_NUM_THREADS": "3"}, dataloader_workers=2, tokenize_processes=5)
    assert (plan.intra_op_threads, plan.set_threads, plan.dataloader_workers, plan.tokenize_processes) == (
        3,
        False,
        2,
        5,
    )
    line = plan.describe(CpuBudget(8, "x"), 1)
    assert "3 intra-op threads (OMP_NUM_THREADS=3, kept), 2 data loader workers (FT_DATALOADER_NUM_WORKERS=2)" in line
    assert "up to 5 processes (FT_PREPROCESSING_NUM_WORKERS=5)" in line
    assert thread_plan(CpuBudget(8, "x"), 1, False, {"OMP_NUM_THREADS": "4,2"}).intra_op_threads == 4


def test_torchruns_default_from_our_launcher_is_not_the_users():
    launched = cpus.launcher_environment({})
    assert launched["OMP_NUM_THREADS"] == "1"  # torchrun then leaves it alone
    environ = {**launched, "LOCAL_WORLD_SIZE": "2"}
    plan = thread_plan(CpuBudget(8, "x"), cpus.local_processes(environ), False, environ)
    assert (plan.intra_op_threads, plan.set_threads) == (4, True)
    assert cpus.launcher_environment({"OMP_NUM_THREADS": "2"}) == {}
    assert cpus.user_threads({"OMP_NUM_THREADS": "2", cpus.LAUNCHER_OMP_VARIABLE: "1"}) == 2


def test_the_log_line_says_the_budget_its_source_and_the_overrides():
    budget = CpuBudget(2, "cgroup cpu.max 200000/100000")
    line = thread_plan(budget, 1, False, {}).describe(budget, 1)
    assert line == (
        "CPU budget 2 (cgroup cpu.max 200000/100000) for 1 process: 2 intra-op threads, 0 data loader workers (CPU "
        "training: workers would take the compute threads' CPUs), tokenization in up to 2 processes; "
        "OMP_NUM_THREADS, FT_DATALOADER_NUM_WORKERS and FT_PREPROCESSING_NUM_WORKERS change them"
    )
    assert line in (REPO / "docs" / "operations.md").read_text()  # the docs quote it


APPLY = """
import logging, sys
from pathlib import Path
import torch
from entrypoint.parallel import cpus
logging.basicConfig(level=logging.INFO)
before = torch.get_num_threads()
plan = cpus.apply(dict(__import__("os").environ), "local", False, cgroup_root=Path(sys.argv[1]))
print(before, torch.get_num_threads(), torch.get_num_interop_threads(), cpus.tokenize_cpus())
"""


def run_apply(cgroup: Path, **env: str) -> tuple[list[int], str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "LOCAL_WORLD_SIZE")}
    done = subprocess.run(
        [sys.executable, "-c", APPLY, str(cgroup)],
        env={**environ, **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return [int(n) for n in done.stdout.split()], done.stderr


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs to see torch's threads change")
def test_apply_sets_torchs_threads_from_the_cgroup(tmp_path):
    (before, threads, interop, tokenize), log = run_apply(cgroup_v2(tmp_path, "100000 100000"))
    assert before > 1 and (threads, interop, tokenize) == (1, 1, 1)  # torch's default: every core
    assert "CPU budget 1 (cgroup cpu.max 100000/100000) for 1 process: 1 intra-op threads, 0 data" in log
    (_, threads, _, _), log = run_apply(cgroup_v2(tmp_path, "100000 100000"), OMP_NUM_THREADS="2")
    assert threads == 2 and "2 intra-op threads (OMP_NUM_THREADS=2, kept)" in log


def test_tokenization_uses_the_applied_budget(monkeypatch):
    ds = datasets.Dataset.from_dict({"text": ["x"] * (preprocess.ROWS_PER_WORKER * 3)})

    class Settings:
        preprocessing_num_workers = None

    for budget, expected in ((1, {}), (3, {"num_proc": 3})):
        monkeypatch.setattr(cpus, "_applied", thread_plan(CpuBudget(budget, "x"), 1, False, {}))
        assert preprocess.map_options(ds, Settings()) == expected


def job_settings(**extra: str):
    env = {"FT_MODEL": "m", "FT_TRAIN_DATA": "t.csv", **{f"FT_{k.upper()}": v for k, v in extra.items()}}
    return load_settings(env, Runtime("local"))


def test_the_data_loader_workers_default_reaches_the_trainer_and_the_setting_wins(tmp_path):
    cpu = Hardware(cuda=False, packages=frozenset())
    args = training_arguments(job_settings(), tmp_path / "a", cuda=False, hw=cpu, dataloader_workers=3)
    assert args.dataloader_num_workers == 3
    mine = job_settings(dataloader_num_workers="1")
    assert (
        training_arguments(mine, tmp_path / "b", cuda=False, hw=cpu, dataloader_workers=3).dataloader_num_workers == 1
    )
