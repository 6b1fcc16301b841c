"""The callbacks that connect the Trainer to the job: checkpoint sync, the metric log lines, the
clock, TensorBoard files, and the processes' agreement that a checkpoint is written."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from transformers import EarlyStoppingCallback, Trainer, TrainerCallback

from entrypoint import reporting
from entrypoint.config.settings import JobSettings
from entrypoint.durability.sync import CheckpointSync
from entrypoint.errors import FinetuneError
from entrypoint.io import storage
from entrypoint.parallel import collectives

log = logging.getLogger(__name__)


def extra_callbacks(settings: JobSettings) -> list[TrainerCallback]:
    """Callbacks the settings ask for (early stopping)."""
    if settings.early_stopping_patience:
        return [EarlyStoppingCallback(early_stopping_patience=settings.early_stopping_patience)]
    return []


class SyncTensorBoard(TrainerCallback):
    """Points the Trainer's TensorBoard writer at `folder` and copies new or grown event files to
    `target` (an S3 prefix or a folder, e.g. SageMaker's /opt/ml/output/tensorboard) at each
    checkpoint, evaluation and the end of training."""

    def __init__(self, folder: Path, target: str, concurrency: int = 4):
        self.folder = folder
        self.target = target
        self.concurrency = concurrency
        self._sent: dict[str, int] = {}

    def attach(self, trainer: Trainer) -> None:
        for cb in trainer.callback_handler.callbacks:
            if type(cb).__name__ == "TensorBoardCallback":
                cb.logging_dir = str(self.folder)

    def sync(self) -> None:
        if not self.folder.is_dir():
            return
        files = {p.relative_to(self.folder).as_posix(): p for p in self.folder.rglob("*") if p.is_file()}
        changed = {k: p for k, p in files.items() if self._sent.get(k) != p.stat().st_size}
        if changed:
            try:
                storage.upload_many(storage.open_store(self.target, self.concurrency), changed, self.concurrency)
                self._sent.update({k: p.stat().st_size for k, p in changed.items()})
            except FinetuneError:  # best effort: the next sync tries again
                log.warning("TensorBoard sync to %s failed; will retry", self.target, exc_info=True)

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.sync()
        return control

    on_evaluate = on_save

    def on_train_end(self, args, state, control, **kwargs):
        return self.on_save(args, state, control, **kwargs)


class SyncCheckpoints(TrainerCallback):
    """Hands every saved checkpoint to the background uploader; stops a superseded attempt."""

    def __init__(self, sync: CheckpointSync | None):
        self.sync = sync

    def on_save(self, args, state, control, **kwargs):
        if self.sync is not None and state.is_world_process_zero:
            best = state.best_model_checkpoint
            best_step = int(best.rsplit("-", 1)[-1]) if best else None
            self.sync.submit(state.global_step, Path(args.output_dir) / f"checkpoint-{state.global_step}", best_step)
        return control

    def on_step_end(self, args, state, control, **kwargs):
        if self.sync is not None and self.sync.superseded:
            control.should_training_stop = True
        return control


class MetricLines(TrainerCallback):
    """Every Trainer log entry as a `[metrics] name=value ...` line (SageMaker metric regexes)."""

    def __init__(self):
        self.first_step_logged = False

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            print(reporting.format_metrics({"step": state.global_step, **logs}), flush=True)
        return control


class RunClock(TrainerCallback):
    """Seconds from process start to the first optimizer step of this attempt."""

    def __init__(self, started: float):
        self.started = started
        self.first_step_s: float | None = None

    def on_step_end(self, args, state, control, **kwargs):
        if self.first_step_s is None:
            self.first_step_s = time.monotonic() - self.started
        return control


class AllSaved(TrainerCallback):
    """Every process has written its part of a checkpoint (RNG state) before the main process
    hands the folder to the uploader: the Trainer does not wait for them itself."""

    def on_save(self, args, state, control, **kwargs):
        collectives.barrier()
        return control
