import logging
import os
import signal
import socket
import threading
import time
from types import SimpleNamespace

import pytest
from transformers import TrainerControl, TrainerState

from entrypoint.config import settings as config
from entrypoint.config.platform import Runtime
from entrypoint.durability import accounting, deadline, interruption
from tests.support.fakes import FakeIMDS
from tests.unit.test_distributed import FakeAllReduce


def test_a_signal_only_raises_the_flag_and_a_second_one_changes_nothing():
    stop = interruption.StopRequest()
    previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        interruption.install_signal_handlers(stop)
        os.kill(os.getpid(), signal.SIGTERM)
        first = stop.requested_at
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.is_set() and stop.reason == "SIGTERM" and stop.signal == signal.SIGTERM
        assert stop.requested_at == first and stop.count == 2
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])


def test_the_callback_saves_and_stops_once_at_the_step_boundary():
    stop = interruption.StopRequest()
    callback = interruption.StopOnRequest(stop)
    control = SimpleNamespace(should_save=False, should_training_stop=False)
    callback.on_step_end(None, SimpleNamespace(global_step=3), control)
    assert not control.should_save and callback.stopped_at_step is None
    stop.request("SIGTERM", signal.SIGTERM)
    callback.on_step_end(None, SimpleNamespace(global_step=4), control)
    assert control.should_save and control.should_training_stop and callback.stopped_at_step == 4


def test_spot_notice_poller_uses_imdsv2_and_raises_the_flag():
    imds = FakeIMDS()
    stop = interruption.StopRequest()
    try:
        poller = interruption.SpotNoticePoller(stop, imds.url, interval_s=0.05)
        assert poller.check() is None  # 404: no interruption scheduled
        poller.start()
        time.sleep(0.2)
        assert not stop.is_set()
        imds.notice()
        assert stop.wait(5)
        assert stop.reason == "spot-interruption-notice" and imds.token_requests == 1
    finally:
        imds.close()


def test_poller_runs_on_batch_or_where_the_endpoint_is_set_and_never_when_disabled():
    stop = interruption.StopRequest()
    assert interruption.start_spot_poller(stop, {}, Runtime("local"), 1) is None
    assert (
        interruption.start_spot_poller(stop, {"AWS_EC2_METADATA_DISABLED": "true"}, Runtime("batch", job_id="j"), 1)
        is None
    )
    poller = interruption.start_spot_poller(
        stop, {"AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:9"}, Runtime("local"), 60
    )
    try:
        assert poller is not None and poller.endpoint == "http://127.0.0.1:9"
    finally:
        poller.close()


def test_accounting_counts_steps_lost_when_the_stop_checkpoint_failed():
    stop = interruption.StopRequest()
    stop.request("SIGTERM", signal.SIGTERM)
    stopper = interruption.StopOnRequest(stop)
    stopper.stopped_at_step = 40
    stats = SimpleNamespace(durable_step=30, durable_at=None, mb_per_s=None, failures=1)
    figures = accounting.accounting(stop, stopper, stats, 5.0, None, 2)
    assert figures["steps_lost"] == 10 and figures["notice_to_durable_s"] is None and figures["interruptions"] == 1


def test_a_metadata_service_that_does_not_answer_is_reported_once_at_warning(caplog):
    with socket.socket() as probe:  # a port where nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    stop = interruption.StopRequest()
    poller = interruption.SpotNoticePoller(stop, f"http://127.0.0.1:{port}", interval_s=0.02)
    with caplog.at_level(logging.DEBUG, logger="entrypoint.durability.interruption"):
        poller.start()
        deadline = time.monotonic() + 10
        while sum("not answering" in r.getMessage() for r in caplog.records) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        poller.close()
        poller.join(5)
    reports = [r for r in caplog.records if "not answering" in r.getMessage()]
    warnings = [r for r in reports if r.levelno == logging.WARNING]
    assert len(reports) >= 4 and len(warnings) == 1, [(r.levelname, r.getMessage()) for r in reports]
    assert f"127.0.0.1:{port}" in warnings[0].getMessage() and not stop.is_set()


def test_the_stop_checkpoint_must_be_durable_before_the_platforms_kill():
    stop = interruption.StopRequest()
    assert interruption.stop_deadline(stop, 120) is None
    stop.request("SIGTERM", signal.SIGTERM)
    assert interruption.stop_deadline(stop, 120) == stop.requested_at + 110  # a margin to report and exit
    assert interruption.stop_deadline(stop, 30) == stop.requested_at + 22.5


def test_the_platforms_grace_after_a_stop_is_the_default_and_a_setting_overrides_it():
    required = {"FT_MODEL": "m", "FT_TRAIN_DATA": "d"}
    plain = config.load_settings(required, Runtime("local"))
    assert config.stop_grace_seconds(plain, Runtime("sagemaker")) == 120
    assert config.stop_grace_seconds(plain, Runtime("batch", job_id="j")) == 30
    assert config.stop_grace_seconds(plain, Runtime("local")) == 30
    longer = config.load_settings({**required, "FT_STOP_GRACE_SECONDS": "110"}, Runtime("local"))
    assert config.stop_grace_seconds(longer, Runtime("batch", job_id="j")) == 110


def test_a_spot_notice_sets_the_deadline_its_time_gives_and_a_set_grace_overrides_it():
    stop = interruption.StopRequest()
    stop.request("spot-interruption-notice", deadline_at=time.monotonic() + 100)
    assert interruption.stop_deadline(stop, 30) == stop.deadline_at - interruption.STOP_MARGIN_S
    assert interruption.stop_deadline(stop, 30, grace_overridden=True) == stop.requested_at + 22.5
    signalled = interruption.StopRequest()
    signalled.request("SIGTERM", signal.SIGTERM)
    assert signalled.deadline_at is None and interruption.stop_deadline(signalled, 30) == signalled.requested_at + 22.5


def test_a_sigterm_after_a_spot_notice_moves_the_deadline_to_its_grace_when_that_is_sooner():
    stop = interruption.StopRequest()
    stop.request("spot-interruption-notice", deadline_at=time.monotonic() + 100)
    assert stop.signalled_at is None
    stop.request("SIGTERM", signal.SIGTERM)  # e.g. ECS stops the task before the notice's time
    assert stop.reason == "spot-interruption-notice" and stop.signalled_at is not None
    assert interruption.stop_deadline(stop, 30) == pytest.approx(stop.signalled_at + 22.5)
    assert "30 s after SIGTERM" in interruption.deadline_source(stop, 30)
    assert interruption.stop_deadline(stop, 120) == stop.deadline_at - interruption.STOP_MARGIN_S


def test_the_poller_takes_the_deadline_from_the_notices_time():
    imds = FakeIMDS()
    stop = interruption.StopRequest()
    try:
        poller = interruption.SpotNoticePoller(stop, imds.url, interval_s=0.05)
        imds.notice(in_s=90)
        poller.start()
        assert stop.wait(5)
        # The notice's time has whole seconds: up to 1 s earlier than 90 s from when it was written.
        assert 88 <= stop.deadline_at - stop.requested_at <= 90.5
    finally:
        imds.close()


def plan_that(save: bool):
    calls = []

    def plan(step):
        calls.append(step)
        return deadline.Decision(save, False, "test")

    return plan, calls


def test_a_stop_checkpoint_the_plan_skips_is_not_saved_and_training_stops_all_the_same(caplog):
    stop = interruption.StopRequest()
    plan, calls = plan_that(save=False)
    callback = interruption.StopOnRequest(stop, plan=plan)
    control = TrainerControl()
    callback.on_step_end(None, TrainerState(global_step=3), control)
    assert calls == [] and not control.should_training_stop  # no request: no plan
    stop.request("SIGTERM", signal.SIGTERM)
    control.should_save = True  # a scheduled save at the same step (DefaultFlowCallback runs first)
    with caplog.at_level(logging.WARNING):
        callback.on_step_end(None, TrainerState(global_step=4), control)
    assert calls == [4] and not control.should_save and control.should_training_stop
    assert callback.stopped_at_step == 4 and callback.skipped_step == 4
    assert "stopping at step 4 without a checkpoint" in caplog.text
    control.should_save = True  # the Trainer's save at the early end of an epoch (FT_SAVE_STRATEGY=epoch)
    callback.on_epoch_end(None, TrainerState(global_step=4), control)
    assert not control.should_save


def test_a_stop_checkpoint_the_plan_allows_is_saved():
    stop = interruption.StopRequest()
    plan, calls = plan_that(save=True)
    callback = interruption.StopOnRequest(stop, plan=plan)
    stop.request("SIGTERM", signal.SIGTERM)
    control = TrainerControl()
    callback.on_step_end(None, TrainerState(global_step=4), control)
    assert calls == [4] and control.should_save and callback.skipped_step is None
    callback.on_epoch_end(None, TrainerState(global_step=4), control)
    assert control.should_save


def test_the_main_processes_plan_holds_for_every_process():
    reduce = FakeAllReduce(3)
    results = {}

    def process(rank):
        stop = interruption.StopRequest()
        plan = plan_that(save=False)[0] if rank == 0 else None  # the main process alone plans
        stopper = interruption.StopOnRequest(stop, reduce.for_rank(rank), plan)
        if rank == 2:
            stop.request("SIGTERM", signal.SIGTERM)  # seen by another process only
        control = TrainerControl()
        stopper.on_step_end(None, TrainerState(global_step=7), control)
        results[rank] = (control.should_save, control.should_training_stop, stopper.skipped_step)

    threads = [threading.Thread(target=process, args=(r,), daemon=True) for r in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == {r: (False, True, 7) for r in range(3)}
