"""report.html at FT_OUTPUT_URI while the job runs (ops/report.py builds it): rebuilt after each
durable checkpoint, in the background, and as an interrupted attempt stops; at the end it goes
into the model folder, published with the model before metrics.json. Best effort throughout: a
report that cannot be built or written is a warning, never a failed job."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from entrypoint.config import settings as config
from entrypoint.config.settings import PREFIX, JobSettings
from entrypoint.durability.sync import CheckpointSync
from entrypoint.io import storage
from entrypoint.ops import report

log = logging.getLogger(__name__)

STOPPING_WAIT_S = 10.0  # an interrupted attempt waits this long for its report, then exits anyway


def settings_for_report(settings: JobSettings) -> dict[str, Any]:
    """The job's settings and the TrainingArguments set explicitly, by variable name, as JSON values."""
    values = {name: getattr(settings, name) for name in JobSettings.model_fields}
    values.update(config.trainer_overrides(settings))
    return {f"{PREFIX}{name.upper()}": json.loads(json.dumps(v, default=str)) for name, v in values.items()}


def final_state(state) -> dict:
    """What the report reads of the Trainer's state at the end (the part trainer_state.json holds)."""
    return {"log_history": list(state.log_history), "global_step": state.global_step, "max_steps": state.max_steps}


class RunReport(TrainerCallback):
    """Writes the report of the run; only the process that uploads checkpoints (`sync` given:
    world rank 0) does anything."""

    def __init__(
        self,
        store: storage.Store,
        settings: JobSettings,
        generation: int,
        resumed_step: int | None,
        sync: CheckpointSync | None,
    ):
        self.store, self.settings, self.generation, self.resumed_step = store, settings, generation, resumed_step
        self.sync = sync
        self._reported_step: int | None = None
        self._thread: threading.Thread | None = None
        self._final = False  # the last report is under way: no more background ones
        self._written = False

    def record_attempt(self) -> None:
        """This attempt's record under `_report/`: where it resumed, its settings (redacted)."""
        if self.sync is None:
            return
        record = report.attempt_record(
            self.generation, self.resumed_step, settings_for_report(self.settings), time.time()
        )
        try:
            report.write_record(self.store, record)
        except Exception:  # best effort: the report then lacks this attempt's settings
            log.warning("could not record this attempt for the report at %s", self.store.uri, exc_info=True)

    def on_step_end(self, args, state, control, **kwargs):
        if self.sync is None or self._final or self._busy():
            return control
        durable = self.sync.stats.durable_step
        if durable is not None and durable != self._reported_step:
            self._reported_step = durable
            self._start()
        return control

    def publish(
        self, state=None, metrics: dict | None = None, into: Path | None = None, wait_s: float | None = None
    ) -> None:
        """The report now (after any one under way): at FT_OUTPUT_URI, or at the end of the job into
        the model folder `into`, which is published with it before metrics.json, with the Trainer's
        final `state` and `metrics`. Waits for it at most `wait_s` (None: until written or failed)."""
        if self.sync is None:
            return
        self._final = True
        self.wait()
        self._start(final_state(state) if state is not None else None, metrics, into)
        self.wait(wait_s)

    def publish_stopping(self) -> None:
        """The report of an interrupted attempt, its ending recorded: waits briefly, the platform will not."""
        self.publish(wait_s=STOPPING_WAIT_S)

    def wait(self, timeout_s: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _start(self, state: dict | None = None, metrics: dict | None = None, into: Path | None = None) -> None:
        self._thread = threading.Thread(target=self._write, args=(state, metrics, into), name="report", daemon=True)
        self._thread.start()

    def _write(self, state: dict | None, metrics: dict | None, into: Path | None) -> None:
        settings = self.settings
        try:
            where = report.publish(
                self.store.uri,
                settings.output_uri,
                state,
                metrics,
                settings.transfer_concurrency,
                to_uri=str(into) if into is not None else None,
            )
            log.log(logging.INFO if self._final or not self._written else logging.DEBUG, "report written to %s", where)
            self._written = True
        except Exception:  # best effort, in the background: training goes on without it
            log.warning("could not write report.html to %s", into or settings.output_uri, exc_info=True)
