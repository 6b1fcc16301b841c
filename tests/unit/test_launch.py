"""The launcher's exit code when processes fail (parallel/launch.py), with the timings torchrun
reports: whole seconds, so a failure and the SIGTERMs torchrun sends after it often tie."""

import signal

import pytest
import torch.distributed.run
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

from entrypoint.errors import ExitCode, WorkersFailed
from entrypoint.parallel.launch import LaunchPlan, exit_code, launch


def test_a_user_error_wins_over_the_processes_torchrun_stopped_after_it():
    # Rank 1 failed with 64; torchrun then SIGTERMed rank 0, which ended as interrupted (143, or
    # killed by SIGTERM), reported in the same second. The launcher itself saw no stop request.
    for stopped in (143, -15):
        assert exit_code({0: (100, stopped), 1: (100, 64)}, stop_received=False) == 64
        assert exit_code({1: (100, 64), 0: (100, stopped)}, stop_received=False) == 64
    # ... even when the stopped process's failure is recorded first (it was captured in an earlier poll)
    assert exit_code({0: (99, 143), 1: (100, 64)}, stop_received=False) == 64
    assert exit_code({0: (100, 130), 1: (100, 75), 2: (101, 143)}, stop_received=False) == 75


def test_the_first_real_failure_still_wins_among_several():
    assert exit_code({0: (100, 143), 1: (101, 64), 2: (100, 75)}, stop_received=False) == 75
    assert exit_code({0: (100, 1), 1: (100, 64)}, stop_received=False) == 1  # a tie: rank order
    assert exit_code({0: (105, -9), 1: (100, 64)}, stop_received=False) == 64


def test_a_stop_the_processes_saw_and_the_launcher_did_not_is_still_an_interruption():
    # e.g. a spot notice, polled by the processes themselves: every process ended as interrupted
    assert exit_code({0: (100, 143), 1: (100, 143)}, stop_received=False) == ExitCode.INTERRUPTED
    assert exit_code({0: (100, -2)}, stop_received=False) == ExitCode.INTERRUPTED_SIGINT


def test_after_a_stop_request_to_the_launcher_the_first_failure_wins_as_before():
    assert exit_code({2: (100, 75), 0: (100, 143)}, stop_received=True) == 143
    assert exit_code({0: (101, 143), 1: (100, 75)}) == 75


def test_the_launcher_ends_with_the_user_error_when_torchrun_stopped_the_other_process(monkeypatch, tmp_path):
    def torchrun(args):  # rank 1 failed with 64, rank 0 was SIGTERMed by torchrun in the same second
        failures = {0: ProcessFailure(0, 1000, 143, str(tmp_path / "none")), 1: ProcessFailure(1, 1001, 64, "")}
        for failure in failures.values():
            failure.timestamp = 100
        raise ChildFailedError("entrypoint", failures)

    monkeypatch.setattr(torch.distributed.run, "run", torchrun)
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(WorkersFailed) as raised:
            launch(LaunchPlan(2))
    finally:
        signal.signal(signal.SIGTERM, handlers[0])
        signal.signal(signal.SIGINT, handlers[1])
    assert raised.value.exit_code == 64
