"""Stop requests: SIGTERM/SIGINT and the EC2 spot interruption notice only raise a flag; the
Trainer callback acts on it at the next optimizer-step boundary (save, then stop)."""

from __future__ import annotations

import logging
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable

from transformers import TrainerCallback

from entrypoint.durability import deadline
from entrypoint.durability.deadline import STOP_MARGIN_S  # noqa: F401 (the margin kept before the kill)
from entrypoint.errors import ExitCode, Interrupted

log = logging.getLogger(__name__)

DEFAULT_IMDS_ENDPOINT = "http://169.254.169.254"
IMDS_TOKEN_TTL_S = 21600
IMDS_TIMEOUT_S = 1.0
IMDS_FAILURES_BEFORE_WARNING = 3


class StopRequest:
    """A flag set by a signal handler or the notice poller; read at step boundaries."""

    def __init__(self):
        self._event = threading.Event()
        self.reason: str | None = None
        self.signal: int | None = None
        self.requested_at: float | None = None  # time.monotonic()
        self.deadline_at: float | None = None  # time.monotonic() of the kill, when the request said it (spot notice)
        self.signalled_at: float | None = None  # time.monotonic() of the first signal, a notice's request or not
        self.count = 0

    def request(self, reason: str, signum: int | None = None, deadline_at: float | None = None) -> None:
        # Called from a signal handler: assignments only, no I/O, no locks.
        self.count += 1
        if signum is not None and self.signalled_at is None:  # after a notice, SIGTERM starts the grace
            self.signalled_at = time.monotonic()
        if not self._event.is_set():
            self.reason, self.signal, self.requested_at = reason, signum, time.monotonic()
            self.deadline_at = deadline_at
            self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout_s: float) -> bool:
        return self._event.wait(timeout_s)

    def interrupted(self) -> Interrupted:
        """The error that ends a job stopped by this request: 130 after SIGINT, else 143."""
        code = ExitCode.INTERRUPTED_SIGINT if self.signal == signal.SIGINT else ExitCode.INTERRUPTED
        return Interrupted(self.reason or "another process's stop request", code)


def install_signal_handlers(stop: StopRequest) -> None:
    """SIGTERM (spot, docker stop, StopTrainingJob, Batch terminate) and SIGINT raise the flag.
    A second signal changes nothing: the save already under way is not disturbed."""

    def handler(signum, _frame):
        stop.request(signal.Signals(signum).name, signum)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


class SpotNoticePoller(threading.Thread):
    """Polls the instance metadata service for the two-minute spot interruption notice.

    IMDSv2: a session token first (PUT), then GET spot/instance-action, which answers 404 until
    EC2 schedules the interruption. Silent where no IMDS answers (a laptop).
    https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/spot-instance-termination-notices.html
    """

    def __init__(self, stop: StopRequest, endpoint: str, interval_s: float):
        super().__init__(name="spot-notice", daemon=True)
        self.stop_request = stop
        self.endpoint = endpoint.rstrip("/")
        self.interval_s = interval_s
        self._token: str | None = None
        self._token_at = 0.0
        self._done = threading.Event()

    def close(self) -> None:
        self._done.set()

    def _fetch_token(self) -> str:
        req = urllib.request.Request(
            f"{self.endpoint}/latest/api/token",
            method="PUT",
            headers={"X-aws-ec2-metadata-token-ttl-seconds": str(IMDS_TOKEN_TTL_S)},
        )
        with urllib.request.urlopen(req, timeout=IMDS_TIMEOUT_S) as resp:
            return resp.read().decode()

    def check(self) -> str | None:
        """The notice body if an interruption is scheduled, else None."""
        if self._token is None or time.monotonic() - self._token_at > IMDS_TOKEN_TTL_S / 2:
            self._token, self._token_at = self._fetch_token(), time.monotonic()
        req = urllib.request.Request(
            f"{self.endpoint}/latest/meta-data/spot/instance-action", headers={"X-aws-ec2-metadata-token": self._token}
        )
        try:
            with urllib.request.urlopen(req, timeout=IMDS_TIMEOUT_S) as resp:
                return resp.read().decode()
        except urllib.error.HTTPError as exc:
            if exc.code == 401:
                self._token = None  # token expired: fetch a new one next time
            if exc.code in (401, 404):
                return None
            raise

    def run(self) -> None:
        failures = 0
        warned = False
        while not self._done.wait(self.interval_s) and not self.stop_request.is_set():
            try:
                notice = self.check()
                failures = 0
            except (OSError, ValueError) as exc:
                failures += 1
                if failures == IMDS_FAILURES_BEFORE_WARNING and not warned:
                    warned = True  # once per attempt: a job on a host without IMDS access would repeat it forever
                    log.warning(
                        "the instance metadata service at %s is not answering (%s): a spot interruption notice "
                        "would be missed (SIGTERM still stops the job cleanly). Still polling; IMDSv2 from a "
                        "container needs a hop limit of 2 on the instance",
                        self.endpoint,
                        exc,
                    )
                elif failures >= IMDS_FAILURES_BEFORE_WARNING:
                    log.debug("instance metadata service still not answering (%s)", exc)
                continue
            if notice:
                kill = deadline.notice_kill_at(notice, time.time(), time.monotonic())
                left = f"the instance goes in {kill - time.monotonic():.0f} s" if kill else "no time in it"
                log.warning("spot interruption notice: %s (%s)", notice, left)
                self.stop_request.request("spot-interruption-notice", deadline_at=kill)
                return


def alone(flags: list[bool]) -> list[bool]:
    """The agreement of a job with one process: its own flags."""
    return flags


class StopCheckpointPlan:
    """The main process's plan for a stop checkpoint (deadline.plan_stop_checkpoint), from what its
    uploads measured so far: skip one that cannot be durable before the deadline, and abandon the
    older upload in flight when the stop checkpoint can make it only without it."""

    def __init__(
        self,
        sync,
        stop_deadline: Callable[[], float | None],
        assumed_mb_per_s: float | None = None,
        checkpoint_bytes: Callable[[], int | None] = lambda: None,
    ):
        self.sync = sync  # durability.sync.CheckpointSync
        self.stop_deadline = stop_deadline
        self.assumed_mb_per_s = assumed_mb_per_s  # FT_ASSUMED_UPLOAD_MB_PER_S, before any measurement
        self.checkpoint_bytes = checkpoint_bytes  # the size of a checkpoint before any upload (a restored one)

    def __call__(self, step: int) -> deadline.Decision:
        stats, now = self.sync.stats, time.monotonic()
        size = stats.bytes // stats.uploads if stats.uploads else self.checkpoint_bytes()
        rate = stats.mb_per_s or self.assumed_mb_per_s
        flight = deadline.in_flight_left_s(now, stats.in_flight_since, size, rate)
        decision = deadline.plan_stop_checkpoint(now, self.stop_deadline(), size, rate, flight)
        if not decision.save:
            durable = stats.durable_step
            newest = f"step {durable}" if durable is not None else "none of this attempt's"
            log.warning(
                "stop checkpoint at step %d skipped: %s; the newest durable checkpoint is %s "
                "(FT_STOP_CHECKPOINT=always saves it anyway)",
                step,
                decision.reason,
                newest,
            )
        elif decision.cancel_in_flight:
            flying = stats.in_flight_step
            if self.sync.cancel_in_flight():
                log.warning(
                    "upload of checkpoint %s abandoned for the stop checkpoint at step %d: %s",
                    flying,
                    step,
                    decision.reason,
                )
        return decision


class StopOnRequest(TrainerCallback):
    """At the first optimizer-step boundary after a stop request: save a checkpoint and stop.

    With several processes, `agree` (an all-reduce MAX, distributed.all_max) runs at every step
    boundary, so a request seen by any process, and a stop decided by the main process alone
    (a superseded attempt; earlier callbacks), stops them all at the same step, and they save
    that checkpoint together. Callbacks that set should_training_stop go before this one.

    `plan` (the main process's StopCheckpointPlan) may decide that the stop checkpoint cannot be
    durable before the platform's kill: then no process saves it, and they stop all the same."""

    def __init__(
        self,
        stop: StopRequest,
        agree: Callable[[list[bool]], list[bool]] = alone,
        plan: Callable[[int], deadline.Decision] | None = None,
    ):
        self.stop = stop
        self.agree = agree
        self.plan = plan
        self.stopped_at_step: int | None = None
        self.skipped_step: int | None = None  # the stop checkpoint not saved: it could not be durable in time

    def on_step_end(self, args, state, control, **kwargs):
        requested, stopping = self.agree([self.stop.is_set(), bool(control.should_training_stop)])
        if requested and self.stopped_at_step is None:
            self.stopped_at_step = state.global_step
            reason = self.stop.reason or "another process's stop request"
            decision = self.plan(state.global_step) if self.plan is not None else None
            # Every process reaches this step's stop together: one more agreement, on the main process's plan.
            (skip,) = self.agree([decision is not None and not decision.save])
            if skip:
                self.skipped_step = state.global_step
                log.warning("stop requested (%s): stopping at step %d without a checkpoint", reason, state.global_step)
            else:
                log.warning(
                    "stop requested (%s): saving a checkpoint at step %d, then stopping", reason, state.global_step
                )
            control.should_save = not skip
            stopping = True
        control.should_training_stop = stopping
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        if state.global_step == self.skipped_step:  # the Trainer would save at the early end of the epoch
            control.should_save = False
        return control


def start_spot_poller(stop: StopRequest, environ, runtime, interval_s: float) -> SpotNoticePoller | None:
    """Poll for spot notices on EC2 (AWS Batch), or wherever the endpoint variable points.

    The endpoint comes from AWS_EC2_METADATA_SERVICE_ENDPOINT, botocore's name for it, and
    AWS_EC2_METADATA_DISABLED=true turns polling off, as it does for botocore.
    """
    if str(environ.get("AWS_EC2_METADATA_DISABLED", "")).lower() == "true":
        return None
    endpoint = environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT")
    if not endpoint and runtime.platform != "batch":
        return None
    poller = SpotNoticePoller(stop, endpoint or DEFAULT_IMDS_ENDPOINT, interval_s)
    poller.start()
    return poller


def check_stop(stop: StopRequest, where: str, agree: Callable[[list[bool]], list[bool]] = alone) -> None:
    """Between stages: a stop requested before training started needs no checkpoint. With
    several processes (`agree`, as for StopOnRequest) they all stop here, or none does."""
    if agree([stop.is_set()])[0]:
        error = stop.interrupted()
        log.warning("stop requested (%s) %s: nothing to save", error.reason, where)
        raise error


def stop_deadline(stop: StopRequest, grace_s: float, grace_overridden: bool = False) -> float | None:
    """By when (time.monotonic()) the stop checkpoint must be durable: the platform kills the job at
    the spot notice's time, else `grace_s` after the stop request (an explicit FT_STOP_GRACE_SECONDS,
    `grace_overridden`, wins over the notice); a margin is kept to report and exit. None without a request."""
    if stop.requested_at is None:
        return None
    kill = deadline.kill_at(stop.requested_at, stop.deadline_at, grace_s, grace_overridden, stop.signalled_at)
    return deadline.durable_by(stop.requested_at, kill)


def deadline_source(stop: StopRequest, grace_s: float, grace_overridden: bool = False) -> str:
    """Where stop_deadline's kill time came from, for the job's messages."""
    return deadline.deadline_source(stop.deadline_at, grace_s, grace_overridden, stop.signalled_at)


def raise_interrupted(stop: StopRequest, figures: dict, skipped: bool = False) -> None:
    """End an interrupted attempt (143, or 130 after SIGINT), saying what the stop cost."""
    if figures["steps_lost"]:
        why = "was skipped: it could not be durable before the kill" if skipped else "did not become durable"
        log.error("the stop checkpoint %s: %d step(s) will be redone", why, figures["steps_lost"])
    raise stop.interrupted()
