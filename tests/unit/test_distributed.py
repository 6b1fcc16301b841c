"""How `finetune train` launches (launch.launch_plan) and how processes agree to stop."""

import json
import signal
import threading
import time

import pytest
from transformers import TrainerControl, TrainerState

from entrypoint.config.platform import Runtime, detect, process_label
from entrypoint.durability import interruption
from entrypoint.errors import Interrupted
from entrypoint.parallel import launch
from entrypoint.parallel.launch import LaunchPlan, exit_code, launch_plan

LOCAL = Runtime(platform="local")


def sagemaker(current: str, hosts=("algo-2", "algo-1")) -> Runtime:
    environ = {"TRAINING_JOB_NAME": "j", "SM_HOSTS": json.dumps(list(hosts)), "SM_CURRENT_HOST": current}
    return detect(environ, {})


def batch(node: int, main: int = 0, nodes: int = 2, main_address: str | None = "10.0.0.7") -> Runtime:
    environ = {
        "AWS_BATCH_JOB_ID": f"abc#{node}",
        "AWS_BATCH_JOB_NUM_NODES": str(nodes),
        "AWS_BATCH_JOB_NODE_INDEX": str(node),
        "AWS_BATCH_JOB_MAIN_NODE_INDEX": str(main),
    }
    if main_address and node != main:  # Batch sets the main node's address on the other nodes only
        environ["AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS"] = main_address
    return detect(environ, {})


def test_one_gpu_or_none_runs_in_this_process():
    assert launch_plan(LOCAL, None, 1, {}) is None
    assert launch_plan(LOCAL, None, 0, {}) is None
    assert launch_plan(LOCAL, 1, 4, {}) is None  # FT_NUM_PROCESSES=1 wins over the GPU count


def test_four_gpus_launch_four_processes_on_a_free_local_port():
    plan = launch_plan(LOCAL, None, 4, {})
    assert plan == LaunchPlan(nproc_per_node=4)
    assert plan.torchrun_args() == ["--standalone", "--nnodes", "1", "--nproc-per-node", "4"]


def test_num_processes_without_gpus_run_ddp_on_the_cpu():
    plan = launch_plan(LOCAL, 2, 0, {})
    assert plan.torchrun_args() == ["--standalone", "--nnodes", "1", "--nproc-per-node", "2"]
    assert dict(plan.environment) == {"ACCELERATE_USE_CPU": "true"}
    assert launch_plan(LOCAL, None, 4, {}).environment == ()


def test_a_process_started_by_torchrun_runs_the_job():
    worker = {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "4"}
    assert launch_plan(LOCAL, None, 4, worker) is None
    assert launch_plan(sagemaker("algo-2"), None, 4, worker) is None


def test_sagemaker_two_hosts_rank_by_sorted_host_name():
    first, second = launch_plan(sagemaker("algo-1"), None, 4, {}), launch_plan(sagemaker("algo-2"), None, 4, {})
    assert first == LaunchPlan(nproc_per_node=4, nnodes=2, node_rank=0, master_addr="algo-1", master_port=29500)
    assert second == LaunchPlan(nproc_per_node=4, nnodes=2, node_rank=1, master_addr="algo-1", master_port=29500)
    assert second.torchrun_args() == [
        "--nnodes",
        "2",
        "--node-rank",
        "1",
        "--master-addr",
        "algo-1",
        "--master-port",
        "29500",
        "--nproc-per-node",
        "4",
    ]


def test_sagemaker_two_cpu_hosts_still_launch_one_process_each():
    assert launch_plan(sagemaker("algo-2"), None, 0, {}) == LaunchPlan(
        1, 2, 1, "algo-1", 29500, (("ACCELERATE_USE_CPU", "true"),)
    )


def test_sagemaker_hosts_from_resourceconfig():
    rt = detect(
        {"TRAINING_JOB_NAME": "j"}, {"resourceconfig.json": '{"current_host": "algo-2", "hosts": ["algo-1", "algo-2"]}'}
    )
    assert launch_plan(rt, None, 1, {}) == LaunchPlan(1, 2, 1, "algo-1", 29500)


def test_batch_multi_node_main_node_is_its_own_master():
    plan = launch_plan(batch(node=0), None, 8, {})
    assert plan == LaunchPlan(nproc_per_node=8, nnodes=2, node_rank=0, master_addr="127.0.0.1", master_port=29500)


def test_batch_multi_node_child_node_joins_the_main_node():
    plan = launch_plan(batch(node=1), None, 8, {"MASTER_PORT": "29600"})
    assert plan == LaunchPlan(nproc_per_node=8, nnodes=2, node_rank=1, master_addr="10.0.0.7", master_port=29600)


def test_batch_main_node_need_not_be_node_zero():
    # node ranks are rotated so the main node (which hosts the rendezvous) is rank 0
    assert launch_plan(batch(node=2, main=2, nodes=3), None, 1, {}).node_rank == 0
    assert launch_plan(batch(node=0, main=2, nodes=3), None, 1, {}).node_rank == 1
    assert launch_plan(batch(node=1, main=2, nodes=3), None, 1, {}).node_rank == 2


def test_batch_single_node_job_with_one_gpu_runs_in_this_process():
    assert launch_plan(detect({"AWS_BATCH_JOB_ID": "abc"}, {}), None, 1, {}) is None


def test_runtime_reads_the_batch_node_fields():
    rt = batch(node=1, main=0, nodes=4)
    assert (rt.num_nodes, rt.node_index, rt.main_node_index, rt.main_node_address) == (4, 1, 0, "10.0.0.7")
    assert "node 1 of 4" in rt.describe()


def test_process_label_only_with_several_processes():
    assert process_label({"RANK": "1", "WORLD_SIZE": "2"}) == "[rank1] "
    assert process_label({"RANK": "0", "WORLD_SIZE": "1"}) == ""
    assert process_label({}) == ""


def test_exit_code_is_the_first_failure():
    assert exit_code({}) == 0
    assert exit_code({0: (100, 143), 1: (100, 143)}) == 143
    assert exit_code({1: (100, 1), 0: (105, -9)}) == 1  # rank 0 was killed after rank 1 failed
    assert exit_code({1: (100, 64), 0: (100, 64)}) == 64
    assert exit_code({0: (100, -15)}) == 143  # killed by SIGTERM, as a shell reports it
    assert exit_code({2: (100, 75), 0: (100, 143)}) == 143  # a tie: rank order


class FakeAllReduce:
    """all-reduce MAX among simulated processes (threads): each returns once all have given their
    flags for the step. A process that does not take part in a step breaks the barrier."""

    def __init__(self, n: int):
        self.given: dict[int, list[bool]] = {}
        self.result: list[bool] = []
        self.barrier = threading.Barrier(n, action=self._reduce, timeout=5)

    def _reduce(self):
        self.result = [any(column) for column in zip(*self.given.values(), strict=True)]
        self.given = {}

    def for_rank(self, rank: int):
        def agree(flags):
            self.given[rank] = list(flags)
            self.barrier.wait()
            return list(self.result)  # read before this process's next step can replace it

        return agree


def run_ranks(n: int, steps: int, stops_at: dict[int, int], superseded_at: dict[int, int] | None = None):
    """Simulate `n` processes' step boundaries; process r sees a stop request before step
    stops_at[r]. Returns, per process, (the step it saved and stopped at, controls per step)."""
    reduce = FakeAllReduce(n)
    results = {}

    def process(rank):
        stop = interruption.StopRequest()
        stopper = interruption.StopOnRequest(stop, reduce.for_rank(rank))
        state, seen = TrainerState(), []
        for step in range(1, steps + 1):
            state.global_step = step
            if stops_at.get(rank) == step:
                stop.request("SIGTERM", signal.SIGTERM)
            control = TrainerControl()
            if (superseded_at or {}).get(rank) == step:
                control.should_training_stop = True  # what SyncCheckpoints does on the main process
            stopper.on_step_end(None, state, control)
            seen.append((control.should_save, control.should_training_stop))
            if control.should_training_stop:
                break
        results[rank] = (stopper.stopped_at_step, seen)

    threads = [threading.Thread(target=process, args=(r,), daemon=True) for r in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "a simulated process is still running after 10 s"
    assert sorted(results) == list(range(n)), f"a simulated process failed (a broken barrier?): {sorted(results)}"
    return results


def test_a_stop_seen_by_one_process_stops_all_at_the_same_step():
    results = run_ranks(3, steps=10, stops_at={2: 4})
    assert {r: results[r][0] for r in results} == {0: 4, 1: 4, 2: 4}
    for _, seen in results.values():
        assert seen[-1] == (True, True) and len(seen) == 4


def test_stop_requests_at_different_steps_agree_on_the_earliest():
    results = run_ranks(2, steps=10, stops_at={0: 7, 1: 3})
    assert results[0][0] == results[1][0] == 3


def test_no_stop_request_means_no_save():
    results = run_ranks(2, steps=5, stops_at={})
    for stopped, seen in results.values():
        assert stopped is None and seen == [(False, False)] * 5


def test_the_main_process_alone_stopping_stops_all_without_a_save():
    results = run_ranks(2, steps=10, stops_at={}, superseded_at={0: 6})
    for stopped, seen in results.values():
        assert stopped is None and len(seen) == 6 and seen[-1] == (False, True)


def test_single_process_agreement_is_its_own_flag():
    stop = interruption.StopRequest()
    stopper = interruption.StopOnRequest(stop)
    state, control = TrainerState(global_step=5), TrainerControl()
    stopper.on_step_end(None, state, control)
    assert not control.should_save and not control.should_training_stop
    stop.request("SIGTERM", signal.SIGTERM)
    stopper.on_step_end(None, state, control)
    assert control.should_save and control.should_training_stop and stopper.stopped_at_step == 5


def test_check_stop_raises_when_any_process_saw_a_request():
    stop = interruption.StopRequest()
    interruption.check_stop(stop, "before training", lambda flags: flags)
    with pytest.raises(Interrupted) as raised:
        interruption.check_stop(stop, "before training", lambda flags: [True])  # another process's request
    assert raised.value.exit_code == 143


def eventually(condition, timeout_s: float = 10.0) -> bool:
    """Whether `condition()` becomes true within `timeout_s` (polled)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_forward_stop_signals_every_process_once_including_late_ones(monkeypatch):
    sent = []
    monkeypatch.setattr(launch.os, "kill", lambda pid, sig: sent.append((pid, sig)))
    stop, finished = interruption.StopRequest(), threading.Event()
    children = [[101, 102]]
    thread = threading.Thread(target=launch.forward_stop, args=(stop, finished, lambda: children[0]), daemon=True)
    thread.start()
    try:
        assert not eventually(lambda: sent, timeout_s=0.5), "signalled before any stop request"
        stop.request("SIGINT", signal.SIGINT)
        assert eventually(lambda: len(sent) >= 2), f"the running processes were not signalled: {sent}"
        children[0] = [101, 102, 103]  # started after the request
        assert eventually(lambda: len(sent) >= 3), f"the late process was not signalled: {sent}"
    finally:
        finished.set()
        thread.join(5)
    assert not thread.is_alive(), "forward_stop did not end once the launch was over"
    assert sent == [(101, signal.SIGINT), (102, signal.SIGINT), (103, signal.SIGINT)]


def test_the_process_group_is_destroyed_before_the_interpreter_shuts_down(tmp_path):
    """A gloo group left to interpreter shutdown can abort a finished process (exit 134)."""
    import subprocess
    import sys

    script = f"""
import atexit, torch.distributed as dist
atexit.register(lambda: print("initialized at exit:", dist.is_initialized()))  # runs after close
from entrypoint.parallel import collectives as distributed
distributed.close_at_exit()
dist.init_process_group("gloo", init_method="file://{tmp_path / "rendezvous"}", rank=0, world_size=1)
dist.barrier()
print("initialized:", dist.is_initialized())
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "initialized: True" in done.stdout and "initialized at exit: False" in done.stdout, done.stdout
