"""Preemption figures: what an interruption cost this attempt, and the whole run."""

from __future__ import annotations

from entrypoint.durability.interruption import StopOnRequest, StopRequest


def accounting(
    stop: StopRequest,
    stopper: StopOnRequest,
    stats,
    first_step_s: float | None,
    resumed_step: int | None,
    generation: int,
) -> dict:
    """Preemption figures of this attempt (also printed as metric lines)."""
    stopped = stopper.stopped_at_step
    durable = stats.durable_step
    baseline = durable if durable is not None else (resumed_step or 0)
    notice_to_durable = None
    if stopped is not None and durable == stopped and stop.requested_at is not None:
        notice_to_durable = round(stats.durable_at - stop.requested_at, 3)
    return {
        "attempt": generation,
        "interruptions": 1 if stop.is_set() or stopped is not None else 0,  # or another process's request
        "steps_lost": max(0, stopped - baseline) if stopped is not None else 0,
        "notice_to_durable_s": notice_to_durable,
        "start_to_first_step_s": round(first_step_s, 3) if first_step_s is not None else None,
        "upload_mb_per_s": round(stats.mb_per_s, 2) if stats.mb_per_s else None,
        "checkpoint_upload_failures": stats.failures,
    }


def run_totals(history: list[dict], generation: int, figures: dict) -> dict:
    """Preemption figures of the whole run: this attempt plus the endings earlier ones recorded."""
    interrupted = [h for h in history if h.get("outcome") == "interrupted"]
    return {
        "restarts": generation - 1,
        "interruptions": len(interrupted) + figures["interruptions"],
        "steps_lost": sum(int(h.get("steps_lost") or 0) for h in interrupted) + figures["steps_lost"],
    }
