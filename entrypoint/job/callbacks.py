"""The callbacks that connect the Trainer to the job: checkpoint sync, the metric log lines, the
clock, TensorBoard files, and the processes' agreement that a checkpoint is written."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from transformers import EarlyStoppingCallback, Trainer, TrainerCallback

from entrypoint import reporting
from entrypoint.config.settings import JobSettings
from entrypoint.durability import deadline
from entrypoint.durability.sync import CheckpointSync, share_parts
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
        self._warned = False

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
            except (FinetuneError, OSError):  # best effort (S3, or a local folder): the next sync tries again
                if not self._warned:
                    self._warned = True
                    log.warning(
                        "TensorBoard sync to %s failed; training goes on, will retry", self.target, exc_info=True
                    )
                else:
                    log.debug("TensorBoard sync to %s failed again", self.target, exc_info=True)

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.sync()
        return control

    on_evaluate = on_save

    def on_train_end(self, args, state, control, **kwargs):
        return self.on_save(args, state, control, **kwargs)


class SyncCheckpoints(TrainerCallback):
    """Hands every saved checkpoint to the background uploader (each machine's first process has
    one); on several machines, hands the machines' finished parts to world rank 0 at each step's
    end; stops a superseded attempt."""

    def __init__(self, sync: CheckpointSync | None, nodes: int = 1):
        self.sync = sync
        self.nodes = nodes

    def on_save(self, args, state, control, **kwargs):
        if self.sync is not None and state.is_local_process_zero:
            best = state.best_model_checkpoint
            best_step = int(best.rsplit("-", 1)[-1]) if best else None
            self.sync.submit(state.global_step, Path(args.output_dir) / f"checkpoint-{state.global_step}", best_step)
        return control

    def on_step_end(self, args, state, control, **kwargs):
        share_parts(self.sync, self.nodes)
        if self.sync is not None and self.sync.superseded:
            control.should_training_stop = True
        return control


def progress(step: int, max_steps: int, steps_done: int, elapsed_s: float) -> dict[str, float]:
    """Percent of the planned steps done, and the seconds left at this attempt's rate so far."""
    if max_steps <= 0:
        return {}
    out = {"progress_pct": round(100 * step / max_steps, 1)}
    if steps_done > 0 and elapsed_s > 0:
        out["eta_s"] = round((max_steps - step) * elapsed_s / steps_done)
    return out


class SaveOncePerStep(TrainerCallback):
    """No second save of a step. With FT_SAVE_STRATEGY=epoch, a stop saves at a step boundary and
    the Trainer then ends the epoch early, and its epoch-end save would save the same step again:
    rewriting in place the files whose first save is being uploaded (the upload's snapshot shares
    them through hard links). Goes after every callback that asks for a save."""

    def __init__(self):
        self.saved_step: int | None = None

    def on_save(self, args, state, control, **kwargs):
        self.saved_step = state.global_step
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        if control.should_save and state.global_step == self.saved_step:
            log.info("step %d is saved already: no second checkpoint at the epoch's end", state.global_step)
            control.should_save = False
        return control


class MetricLines(TrainerCallback):
    """Every Trainer log entry as a `[metrics] name=value ...` line (SageMaker metric regexes),
    with the percent done and the time left (progress_pct, eta_s) on training lines, and the age of
    the newest durable checkpoint (durable_age_s, given the main process's `sync`): a warning when
    it grows to several save intervals (uploads fall behind the saves)."""

    def __init__(self, sync: CheckpointSync | None = None):
        self.start: tuple[float, int] | None = None  # (time, step) when this attempt began training
        self.sync = sync
        self._warned_age = False

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = (time.monotonic(), state.global_step)
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            values = {"step": state.global_step, **logs}
            if self.start is not None and "loss" in logs:  # a training line, not an evaluation's
                started, first_step = self.start
                values.update(
                    progress(
                        state.global_step, state.max_steps, state.global_step - first_step, time.monotonic() - started
                    )
                )
                values.update(self._exposure(args, state.global_step - first_step, time.monotonic() - started))
            print(reporting.format_metrics(values), flush=True)
        return control

    def _exposure(self, args, steps_done: int, elapsed_s: float) -> dict[str, float]:
        """durable_age_s: at most the training a preemption now would lose (none before a durable checkpoint)."""
        durable_at = self.sync.stats.durable_at if self.sync is not None else None
        if durable_at is None:
            return {}
        age = time.monotonic() - durable_at
        every = args.save_steps if getattr(args, "save_strategy", None) == "steps" else None
        interval = every * elapsed_s / steps_done if every and every >= 1 and steps_done > 0 else None
        if not self._warned_age and deadline.exposed(age, interval):
            self._warned_age = True  # once per attempt
            log.warning(
                "the newest durable checkpoint (step %s) is %.0f s old, more than %.0f save intervals (~%.0f s each): "
                "checkpoint uploads fall behind (see upload_mb_per_s and checkpoint_upload_failures); a preemption "
                "now would lose that much training",
                self.sync.stats.durable_step,
                age,
                deadline.EXPOSURE_INTERVALS,
                interval,
            )
        return {"durable_age_s": round(age, 1)}


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
