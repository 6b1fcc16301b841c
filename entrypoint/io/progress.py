"""Progress of a transfer of several files: a bar redrawn in place on a terminal, and in a log that
ends up in CloudWatch one line every `every_s` seconds (not a line per file or per redraw)."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

log = logging.getLogger("finetune")

EVERY_S = 30.0
BAR_WIDTH = 30


class Progress:
    """Bytes moved of `total_bytes`, told as they move (`add`, from any thread) and at the end."""

    def __init__(
        self,
        what: str,
        total_bytes: int,
        every_s: float | None = None,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.what, self.total, self.clock = what, max(total_bytes, 0), clock
        self.every_s = EVERY_S if every_s is None else every_s
        self.stream = stream if stream is not None else sys.stderr
        self.terminal = bool(getattr(self.stream, "isatty", lambda: False)())
        self.done_bytes = 0
        self.started = self.last = clock()
        self._lock = threading.Lock()

    def line(self) -> str:
        elapsed = max(self.clock() - self.started, 1e-9)
        share = self.done_bytes / self.total if self.total else 1.0
        rate = self.done_bytes / 1e6 / elapsed
        return f"{self.what}: {self.done_bytes / 1e6:.1f} of {self.total / 1e6:.1f} MB ({share:.0%}), {rate:.1f} MB/s"

    def add(self, n: int) -> None:
        with self._lock:
            self.done_bytes += n
            now = self.clock()
            if self.terminal:
                share = self.done_bytes / self.total if self.total else 1.0
                filled = int(BAR_WIDTH * min(share, 1.0))
                self.stream.write(f"\r[{'#' * filled}{' ' * (BAR_WIDTH - filled)}] {self.line()}")
                self.stream.flush()
            elif now - self.last >= self.every_s:
                self.last = now
                log.info("%s", self.line())

    def finish(self) -> None:
        """The last word: a newline after the bar; a line when the transfer outlasted one period."""
        with self._lock:
            if self.terminal:
                self.stream.write("\n")
                self.stream.flush()
            elif self.clock() - self.started >= self.every_s:
                log.info("%s (done)", self.line())
