"""The two families of failure and the exit-code table that the CLI, the README and the
AWS Batch retry rules share (one source of truth; `finetune exit-codes --json` prints it)."""

from __future__ import annotations

import dataclasses
import enum


class ExitCode(enum.IntEnum):
    OK = 0
    UNEXPECTED = 1  # a bug or an unclassified failure: not retried (it would fail again)
    USAGE = 2  # bad command line (argparse's own code)
    USER_ERROR = 64  # the user's mistake: bad settings, missing data or columns, unreadable model
    WORLD_ERROR = 75  # the world's fault after retries: S3 unreachable, throttled, superseded attempt
    INTERRUPTED_SIGINT = 130  # Ctrl-C: checkpoint saved and durable, then stopped
    INTERRUPTED = 143  # SIGTERM or spot notice: checkpoint saved and durable, then stopped


@dataclasses.dataclass(frozen=True)
class ExitCodeDoc:
    code: int
    name: str
    meaning: str
    retried: bool


EXIT_CODES: tuple[ExitCodeDoc, ...] = (
    ExitCodeDoc(0, "OK", "Training finished and the model and metrics.json are at the output location.", False),
    ExitCodeDoc(
        1,
        "UNEXPECTED",
        "An unexpected error (a bug, or a failure not classified below). The traceback is logged.",
        False,
    ),
    ExitCodeDoc(2, "USAGE", "The command line was wrong (unknown subcommand or flag).", False),
    ExitCodeDoc(
        64,
        "USER_ERROR",
        (
            "The user's mistake: bad settings, missing data or columns, unreadable model, a local disk too small. "
            "Fix the input; retrying cannot help."
        ),
        False,
    ),
    ExitCodeDoc(
        75,
        "WORLD_ERROR",
        (
            "A transient fault of the world after retries (S3 unreachable, throttled or stalled past the deadline, a "
            "newer attempt took over). Retrying resumes from the newest complete checkpoint."
        ),
        True,
    ),
    ExitCodeDoc(130, "INTERRUPTED_SIGINT", "Stopped by SIGINT (Ctrl-C) after a durable checkpoint.", False),
    ExitCodeDoc(
        137,
        "KILLED",
        (
            "Killed by SIGKILL (not set by finetune: OOM killer, or the 30 s after SIGTERM ran out). Retried only "
            "when Batch reports a spot reclamation."
        ),
        False,
    ),
    ExitCodeDoc(
        143,
        "INTERRUPTED",
        (
            "Stopped by SIGTERM or a spot interruption notice after a durable checkpoint: the stop checkpoint, or, "
            "when that one could not be durable before the kill, the newest durable one (`steps_lost` says what will "
            "be redone). Rerun (or let Batch/SageMaker retry) to resume."
        ),
        True,
    ),
)


@dataclasses.dataclass(frozen=True)
class RetryRule:
    """One AWS Batch `evaluateOnExit` rule; Batch applies the first rule that matches."""

    action: str  # "RETRY" or "EXIT"
    on_exit_code: str | None = None
    on_status_reason: str | None = None
    on_reason: str | None = None


# Batch allows at most 5 rules. Spot reclamation shows as the status reason "Host EC2 (instance
# i-...) terminated." with no exit code, hence the reason rule first.
RETRY_RULES: tuple[RetryRule, ...] = (
    RetryRule("RETRY", on_status_reason="Host EC2*"),
    RetryRule("RETRY", on_exit_code=str(int(ExitCode.INTERRUPTED))),
    RetryRule("RETRY", on_exit_code=str(int(ExitCode.WORLD_ERROR))),
    RetryRule("EXIT", on_exit_code=str(int(ExitCode.USER_ERROR))),
    RetryRule("EXIT", on_reason="*"),
)


def retry_rules_json(api: bool = False) -> list[dict[str, str]]:
    """RETRY_RULES in Terraform's `evaluate_on_exit` shape (snake_case keys), or with `api` in the
    Batch API's `evaluateOnExit` shape (camelCase keys)."""
    fields = (("on_status_reason", "onStatusReason"), ("on_exit_code", "onExitCode"), ("on_reason", "onReason"))
    out = []
    for rule in RETRY_RULES:
        item = {"action": rule.action}
        for snake, camel in fields:
            value = getattr(rule, snake)
            if value is not None:
                item[camel if api else snake] = value
        out.append(item)
    return out


class FinetuneError(Exception):
    """Base of the errors the CLI maps to an exit code and reports without a traceback."""

    # An ExitCode, or a training process's own exit code (WorkersFailed, FailedElsewhere).
    exit_code: int = ExitCode.UNEXPECTED


class UserError(FinetuneError):
    """The user's mistake. Never retried. The message names the setting or file and the fix."""

    exit_code = ExitCode.USER_ERROR


class SettingsError(UserError):
    """Every problem found in the settings, reported together."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in the settings:\n{lines}")


class WorldError(FinetuneError):
    """A failure of the world (network, S3, a newer attempt). Retried by Batch."""

    exit_code = ExitCode.WORLD_ERROR


class Interrupted(FinetuneError):
    """Training stopped on a signal or spot notice after a durable checkpoint."""

    def __init__(self, reason: str, exit_code: ExitCode = ExitCode.INTERRUPTED):
        self.reason = reason
        self.exit_code = exit_code
        super().__init__(f"interrupted by {reason}")


class WorkersFailed(FinetuneError):
    """A training process failed; its own log lines above say why."""

    def __init__(self, code: int):
        self.exit_code = code
        super().__init__(f"a training process exited with code {code}; its log lines above say why")


class FailedElsewhere(FinetuneError):
    """Another process failed at a step all processes share; this one ends the same way."""

    def __init__(self, message: str, code: int):
        self.exit_code = code
        super().__init__(message)
