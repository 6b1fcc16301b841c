"""The stop deadline and the stop checkpoint's plan (durability/deadline.py): pure decisions."""

import datetime
import json

import pytest

from entrypoint.durability import deadline

WALL = datetime.datetime(2026, 12, 1, 9, 58, 0, tzinfo=datetime.UTC).timestamp()


def notice(time: str | None) -> str:
    return json.dumps({"action": "terminate", **({"time": time} if time is not None else {})})


def test_the_spot_notices_time_becomes_a_monotonic_deadline():
    # The notice says 10:00:00Z; it is 09:58:00 on the wall clock and 500.0 on the monotonic one.
    assert deadline.notice_kill_at(notice("2026-12-01T10:00:00Z"), WALL, 500.0) == pytest.approx(620.0)
    assert deadline.notice_kill_at(notice("2026-12-01T09:59:30+00:00"), WALL, 500.0) == pytest.approx(590.0)
    assert deadline.notice_kill_at(notice("2026-12-01T10:00:00"), WALL, 500.0) == pytest.approx(620.0)  # UTC


@pytest.mark.parametrize(
    "body",
    [notice(None), notice("soon"), "not json", json.dumps(["terminate"]), notice("2026-12-01T09:57:00Z")],
    ids=["no time", "unreadable time", "not json", "not an object", "in the past"],
)
def test_a_notice_without_a_usable_time_gives_no_deadline(body):
    assert deadline.notice_kill_at(body, WALL, 500.0) is None


def test_the_kill_comes_at_the_notices_time_else_after_the_grace_and_a_set_grace_wins():
    assert deadline.kill_at(100.0, None, 30.0) == 130.0  # SIGTERM: the platform's grace
    assert deadline.kill_at(100.0, 215.0, 30.0) == 215.0  # the spot notice says when
    assert deadline.kill_at(100.0, 215.0, 60.0, grace_overridden=True) == 160.0  # FT_STOP_GRACE_SECONDS


def test_a_sigterm_after_the_notice_brings_the_kill_forward_when_its_grace_ends_sooner():
    assert deadline.kill_at(100.0, 215.0, 30.0, signalled_at=150.0) == 180.0  # SIGTERM + 30 s < the notice's time
    assert deadline.kill_at(100.0, 215.0, 30.0, signalled_at=200.0) == 215.0  # the notice's time is sooner
    assert deadline.kill_at(100.0, None, 30.0, signalled_at=100.0) == 130.0  # SIGTERM alone


def test_the_deadlines_source_is_named_as_it_was_decided():
    assert "spot interruption notice" in deadline.deadline_source(215.0, 30.0, False, None)
    assert "30 s after SIGTERM" in deadline.deadline_source(215.0, 30.0, False, 150.0)
    assert "spot interruption notice" in deadline.deadline_source(215.0, 30.0, False, 200.0)
    assert "60 s after the stop request" in deadline.deadline_source(215.0, 60.0, True, None)
    assert "30 s after the stop request" in deadline.deadline_source(None, 30.0, False, 100.0)


def test_a_margin_is_kept_before_the_kill_to_report_and_exit():
    assert deadline.durable_by(100.0, 220.0) == 210.0  # at most STOP_MARGIN_S
    assert deadline.durable_by(100.0, 120.0) == 115.0  # a quarter of a short grace
    assert deadline.durable_by(100.0, 90.0) == 90.0  # a kill already due: no margin left to keep


def test_a_stop_checkpoint_that_cannot_be_durable_in_time_is_skipped():
    # 270 MB at 10 MB/s: 27 s plus the overhead, 15 s left.
    decision = deadline.plan_stop_checkpoint(100.0, 115.0, 270_000_000, 10.0)
    assert not decision.save and not decision.cancel_in_flight
    assert decision.needs_s == pytest.approx(27 + deadline.UPLOAD_OVERHEAD_S) and decision.left_s == 15.0
    assert decision.reason == "~270 MB at 10 MB/s needs ~29 s, the deadline is in 15 s"


def test_a_stop_checkpoint_that_can_make_it_is_saved():
    decision = deadline.plan_stop_checkpoint(100.0, 210.0, 270_000_000, 10.0)
    assert decision.save and not decision.cancel_in_flight and decision.left_s == 110.0


def test_without_a_measurement_or_a_deadline_the_stop_checkpoint_is_tried():
    assert deadline.plan_stop_checkpoint(100.0, 101.0, 270_000_000, None).save
    assert deadline.plan_stop_checkpoint(100.0, 101.0, None, 10.0).save
    assert deadline.plan_stop_checkpoint(100.0, None, 270_000_000, 0.01).save


def test_an_older_upload_in_flight_is_abandoned_only_when_the_stop_checkpoint_needs_its_time():
    # The stop checkpoint needs ~29 s of the 40 s left: after 20 s more of the upload in flight, too late.
    late = deadline.plan_stop_checkpoint(100.0, 140.0, 270_000_000, 10.0, in_flight_left_s=20.0)
    assert late.save and late.cancel_in_flight and "after the upload in flight" in late.reason
    # After 5 s more it still makes it: the older one finishes too.
    both = deadline.plan_stop_checkpoint(100.0, 140.0, 270_000_000, 10.0, in_flight_left_s=5.0)
    assert both.save and not both.cancel_in_flight
    # It cannot make it even alone: the one in flight is finished instead.
    neither = deadline.plan_stop_checkpoint(100.0, 120.0, 270_000_000, 10.0, in_flight_left_s=5.0)
    assert not neither.save and not neither.cancel_in_flight


def test_the_time_left_to_the_upload_in_flight_is_estimated_from_the_rate_so_far():
    assert deadline.in_flight_left_s(110.0, None, 270_000_000, 10.0) is None  # nothing in flight
    assert deadline.in_flight_left_s(110.0, 100.0, 270_000_000, 10.0) == pytest.approx(
        27 + deadline.UPLOAD_OVERHEAD_S - 10
    )
    assert deadline.in_flight_left_s(200.0, 100.0, 270_000_000, 10.0) == 0.0  # overdue: about to finish
    assert deadline.in_flight_left_s(110.0, 100.0, 270_000_000, None) == float("inf")


def test_exposure_is_several_save_intervals_without_a_durable_checkpoint():
    assert not deadline.exposed(100.0, None)
    assert not deadline.exposed(50.0, 10.0)  # under the floor: not worth a warning
    assert deadline.exposed(61.0, 10.0)
    assert not deadline.exposed(250.0, 100.0) and deadline.exposed(301.0, 100.0)
