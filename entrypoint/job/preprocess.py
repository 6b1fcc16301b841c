"""Tokenization helpers shared by the tasks: truncation to FT_MAX_LENGTH and no padding here (the
collators pad each batch to its own longest example, which keeps short-text batches cheap); how
many processes tokenize (from the job's CPU budget, parallel/cpus.py); progress lines for long runs."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator

from transformers import PreTrainedTokenizerBase

from entrypoint.parallel.cpus import tokenize_cpus

log = logging.getLogger(__name__)

# BERT-style models take 512 positions; tokenizers without a limit report a huge sentinel.
DEFAULT_MAX_LENGTH = 512


def max_length(tokenizer: PreTrainedTokenizerBase, requested: int | None, cap: int = DEFAULT_MAX_LENGTH) -> int:
    """FT_MAX_LENGTH, or the tokenizer's own limit, at most `cap`."""
    limit = tokenizer.model_max_length if 0 < (tokenizer.model_max_length or 0) < 100_000 else cap
    return min(requested, limit) if requested else min(limit, cap)


# Below this many rows per process, starting processes costs more than tokenizing in one.
ROWS_PER_WORKER = 20_000
PROGRESS_INTERVAL_S = 30.0


def workers(rows: int, requested: int | None, cpus: int) -> int:
    """Processes to tokenize `rows` rows: FT_PREPROCESSING_NUM_WORKERS, else one per CPU as long
    as each gets ROWS_PER_WORKER rows or more (1 for small data sets)."""
    if requested:
        return max(1, min(requested, rows))
    return max(1, min(cpus, rows // ROWS_PER_WORKER))


def map_options(ds, settings) -> dict:
    """`Dataset.map` arguments for a task's tokenization: `num_proc` when several processes pay
    off. Only for maps whose output rows depend on their own input row alone (not packing, whose
    blocks follow the batch boundaries that the processes' shards move)."""
    n = workers(len(ds), getattr(settings, "preprocessing_num_workers", None), tokenize_cpus())
    return {"num_proc": n} if n > 1 else {}


@contextlib.contextmanager
def progress(what: str, rows: int, interval_s: float = PROGRESS_INTERVAL_S) -> Iterator[None]:
    """A log line every `interval_s` while `what` runs (progress bars are off: in CloudWatch each
    redraw would become a line), and one at the end with its duration."""
    started = time.monotonic()
    done = threading.Event()

    def report() -> None:
        while not done.wait(interval_s):
            log.info("%s: %d rows, still running after %.0f s", what, rows, time.monotonic() - started)

    thread = threading.Thread(target=report, name="progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
    log.info("%s: %d rows in %.1f s", what, rows, time.monotonic() - started)
