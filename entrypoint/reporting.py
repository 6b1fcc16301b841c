"""Metric log lines: one `name=value` pair per token, on lines that start with `[metrics]`.

SageMaker picks metrics out of the job's log with regular expressions (MetricDefinitions); the
regexes from `metric_definitions` match what `format_metrics` prints, and a test checks both.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from collections.abc import Iterator

PREFIX = "[metrics]"
_NUMBER = r"(-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?)"


def format_metrics(values: dict[str, float | int | None]) -> str:
    """`[metrics] name=value name=value ...` for the numeric, finite values."""
    parts = []
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            continue
        parts.append(f"{name}={value:.6g}" if isinstance(value, float) else f"{name}={value}")
    return f"{PREFIX} " + " ".join(parts)


class Stages:
    """Seconds spent in each stage of an attempt's start-up (restore, downloads, preparing the
    data, loading the model), as `stage_<name>_s` metrics."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.monotonic() - started

    def metrics(self) -> dict[str, float]:
        return {f"stage_{name}_s": round(seconds, 3) for name, seconds in self.seconds.items()}


def metric_regex(name: str) -> str:
    """The regex that captures `name`'s value from a metrics line (not a longer name ending in it)."""
    return rf"(?:^|\s){re.escape(name)}={_NUMBER}"


def metric_definitions(names: list[str]) -> list[dict[str, str]]:
    """SageMaker `MetricDefinitions` for `names`."""
    return [{"Name": name, "Regex": metric_regex(name)} for name in names]


# The metrics a training job prints; a launcher registers these with SageMaker.
STANDARD_METRICS = [
    "loss",
    "learning_rate",
    "grad_norm",
    "epoch",
    "eval_loss",
    "eval_accuracy",
    "eval_f1_macro",
    "eval_perplexity",
    "eval_bleu",
    "eval_gen_len",
    "train_runtime",
    "train_samples_per_second",
    "interruptions",
    "steps_lost",
    "notice_to_durable_s",
    "start_to_first_step_s",
    "upload_mb_per_s",
    "objective",
    "best_objective",
]
