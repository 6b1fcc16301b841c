"""The stop deadline and the stop checkpoint's plan: pure decisions, no effects.

When the platform kills the job after a stop request: the spot notice says it (its `time`); after
SIGTERM it is the platform's grace (FT_STOP_GRACE_SECONDS, which also overrides the notice). A
stop checkpoint that cannot be durable by then is not started: the upload already in flight is
finished instead, and the job exits with the newest durable step."""

from __future__ import annotations

import dataclasses
import datetime
import json

# Kept from the platform's grace after a stop request (at most this, or a quarter of it), to report
# and exit before the kill: a training process's interpreter takes seconds to shut down.
STOP_MARGIN_S = 10.0
# Added to a checkpoint's transfer time at the measured rate: saving it locally, hashing it, listing
# and committing its manifest.
UPLOAD_OVERHEAD_S = 2.0


def notice_kill_at(body: str, wall_now: float, monotonic_now: float) -> float | None:
    """When (time.monotonic()) the spot notice `body`, e.g. {"action": "terminate", "time":
    "2026-12-01T10:00:00Z"}, says the instance goes: its wall-clock `time` on the monotonic clock.
    None when the notice has no readable time, or one that is not in the future (a skewed clock)."""
    try:
        stamp = json.loads(body)["time"]
        when = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)  # EC2 writes UTC
    left_s = when.timestamp() - wall_now
    return monotonic_now + left_s if left_s > 0 else None


def kill_at(
    requested_at: float,
    notice_at: float | None,
    grace_s: float,
    grace_overridden: bool = False,
    signalled_at: float | None = None,
) -> float:
    """When (time.monotonic()) the platform kills the job after a stop requested at `requested_at`:
    the time the spot notice gave (`notice_at`), or `grace_s` after a SIGTERM that came after the
    notice (`signalled_at`) if that is sooner; else `grace_s` after the request. An explicit
    FT_STOP_GRACE_SECONDS (`grace_overridden`) wins over the notice."""
    return kill_time(requested_at, notice_at, grace_s, grace_overridden, signalled_at)[0]


def deadline_source(notice_at: float | None, grace_s: float, grace_overridden: bool, signalled_at: float | None) -> str:
    """Where the kill time of `kill_at` came from, in words for the job's messages."""
    return kill_time(0.0, notice_at, grace_s, grace_overridden, signalled_at)[1]


def kill_time(
    requested_at: float, notice_at: float | None, grace_s: float, grace_overridden: bool, signalled_at: float | None
) -> tuple[float, str]:
    """kill_at's time and where it came from: one decision for both."""
    grace = f"{grace_s:.0f} s after %s (the platform's grace; FT_STOP_GRACE_SECONDS sets it)"
    if notice_at is not None and not grace_overridden:
        if signalled_at is not None and signalled_at + grace_s < notice_at:
            return signalled_at + grace_s, grace % "SIGTERM"
        return notice_at, "the time in the spot interruption notice"
    return requested_at + grace_s, grace % "the stop request"


def durable_by(requested_at: float, kill: float) -> float:
    """By when the stop checkpoint must be durable: a margin before the kill, to report and exit."""
    return kill - min(STOP_MARGIN_S, max(0.0, kill - requested_at) / 4)


@dataclasses.dataclass(frozen=True)
class Decision:
    """Whether to save a stop checkpoint, and whether to abandon the older upload in flight for it."""

    save: bool
    cancel_in_flight: bool
    reason: str
    needs_s: float | None = None  # the estimated time to make the stop checkpoint durable
    left_s: float | None = None  # the time left until it must be durable


def upload_seconds(checkpoint_bytes: int, mb_per_s: float) -> float:
    """The estimated time to make a checkpoint of `checkpoint_bytes` durable at `mb_per_s`."""
    return checkpoint_bytes / 1e6 / mb_per_s + UPLOAD_OVERHEAD_S


def plan_stop_checkpoint(
    now: float,
    deadline: float | None,
    checkpoint_bytes: int | None,
    mb_per_s: float | None,
    in_flight_left_s: float | None = None,
) -> Decision:
    """Save a stop checkpoint only if it can be durable by `deadline` (time.monotonic()), estimated
    from the size of the checkpoints so far and the upload rate measured (or assumed) so far.

    `in_flight_left_s`: the estimated time left to the older upload in flight (None: none is). When
    the stop checkpoint can make it alone but not after that upload, the older one is abandoned."""
    if deadline is None:
        return Decision(True, False, "no deadline is known")
    if not checkpoint_bytes or not mb_per_s:
        return Decision(True, False, "no upload rate measured yet: the stop checkpoint is tried")
    needs = upload_seconds(checkpoint_bytes, mb_per_s)
    left = deadline - now
    size = (
        f"~{checkpoint_bytes / 1e6:.3g} MB at {mb_per_s:.3g} MB/s needs ~{needs:.0f} s, the deadline is in {left:.0f} s"
    )
    if needs > left:
        return Decision(False, False, size, needs, left)
    if in_flight_left_s is not None and in_flight_left_s + needs > left:
        return Decision(
            True, True, f"{size}, after the upload in flight (~{in_flight_left_s:.0f} s more) too late", needs, left
        )
    return Decision(True, False, size, needs, left)


def in_flight_left_s(
    now: float, since: float | None, checkpoint_bytes: int | None, mb_per_s: float | None
) -> float | None:
    """The estimated time left to the upload in flight since `since` (None: nothing in flight), as
    long as a checkpoint takes at the rate so far (infinite without a measurement)."""
    if since is None:
        return None
    if not checkpoint_bytes or not mb_per_s:
        return float("inf")
    return max(0.0, upload_seconds(checkpoint_bytes, mb_per_s) - (now - since))


# The newest durable checkpoint may be this many save intervals old (and at least EXPOSURE_MIN_S)
# before the metric lines warn: uploads are falling behind the saves.
EXPOSURE_INTERVALS = 3.0
EXPOSURE_MIN_S = 60.0


def exposed(durable_age_s: float, save_interval_s: float | None) -> bool:
    """Whether the newest durable checkpoint is several save intervals old: uploads fall behind the
    saves (slow or failing), and a preemption now would lose that much training."""
    if save_interval_s is None or save_interval_s <= 0:
        return False
    return durable_age_s > max(EXPOSURE_MIN_S, EXPOSURE_INTERVALS * save_interval_s)
