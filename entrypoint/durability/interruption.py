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

from entrypoint.errors import ExitCode, Interrupted

log = logging.getLogger(__name__)

DEFAULT_IMDS_ENDPOINT = "http://169.254.169.254"
IMDS_TOKEN_TTL_S = 21600
IMDS_TIMEOUT_S = 1.0
IMDS_FAILURES_BEFORE_WARNING = 3
# Kept from the platform's grace after a stop request (at most this, or a quarter of it), to report
# and exit before the kill: a training process's interpreter takes seconds to shut down.
STOP_MARGIN_S = 10.0


class StopRequest:
    """A flag set by a signal handler or the notice poller; read at step boundaries."""

    def __init__(self):
        self._event = threading.Event()
        self.reason: str | None = None
        self.signal: int | None = None
        self.requested_at: float | None = None  # time.monotonic()
        self.count = 0

    def request(self, reason: str, signum: int | None = None) -> None:
        # Called from a signal handler: assignments only, no I/O, no locks.
        self.count += 1
        if not self._event.is_set():
            self.reason, self.signal, self.requested_at = reason, signum, time.monotonic()
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
                log.warning("spot interruption notice: %s", notice)
                self.stop_request.request("spot-interruption-notice")
                return


def alone(flags: list[bool]) -> list[bool]:
    """The agreement of a job with one process: its own flags."""
    return flags


class StopOnRequest(TrainerCallback):
    """At the first optimizer-step boundary after a stop request: save a checkpoint and stop.

    With several processes, `agree` (an all-reduce MAX, distributed.all_max) runs at every step
    boundary, so a request seen by any process, and a stop decided by the main process alone
    (a superseded attempt; earlier callbacks), stops them all at the same step, and they save
    that checkpoint together. Callbacks that set should_training_stop go before this one."""

    def __init__(self, stop: StopRequest, agree: Callable[[list[bool]], list[bool]] = alone):
        self.stop = stop
        self.agree = agree
        self.stopped_at_step: int | None = None

    def on_step_end(self, args, state, control, **kwargs):
        requested, stopping = self.agree([self.stop.is_set(), bool(control.should_training_stop)])
        if requested and self.stopped_at_step is None:
            self.stopped_at_step = state.global_step
            reason = self.stop.reason or "another process's stop request"
            log.warning("stop requested (%s): saving a checkpoint at step %d, then stopping", reason, state.global_step)
            control.should_save = True
            stopping = True
        control.should_training_stop = stopping
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


def stop_deadline(stop: StopRequest, grace_s: float) -> float | None:
    """By when (time.monotonic()) the stop checkpoint must be durable: the platform kills the job
    `grace_s` after the stop request; a margin is kept to report and exit. None without a request."""
    if stop.requested_at is None:
        return None
    return stop.requested_at + grace_s - min(STOP_MARGIN_S, grace_s / 4)


def raise_interrupted(stop: StopRequest, figures: dict) -> None:
    if figures["steps_lost"]:
        log.error("the stop checkpoint did not become durable: %d step(s) will be redone", figures["steps_lost"])
    raise stop.interrupted()
