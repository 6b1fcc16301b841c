"""The Trainer: arguments from the settings, metrics, and the callbacks that connect it to
checkpoint sync, stop requests and the metric log lines."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

from . import modeling, reporting
from .checkpoints import CheckpointSync
from .errors import UserError
from .settings import JobSettings, trainer_overrides

log = logging.getLogger(__name__)

# Where this program's defaults differ from the Trainer's, and why.
DEFAULTS = {
    "save_total_limit": 2,  # local scratch only: retention at FT_CHECKPOINT_URI is FT_CHECKPOINT_KEEP_LAST
    "disable_tqdm": True,  # progress bars flood CloudWatch; the [metrics] lines report progress
    "logging_steps": 50,
}


def training_arguments(settings: JobSettings, output_dir: Path, cuda: bool) -> TrainingArguments:
    """TrainingArguments from the settings; a rejected combination is the user's error."""
    overrides = trainer_overrides(settings)
    kwargs = dict(DEFAULTS, dataloader_pin_memory=cuda)
    kwargs.update(modeling.precision(overrides.pop("bf16", None), overrides.pop("fp16", None)))
    kwargs.update(overrides)
    try:
        return TrainingArguments(output_dir=str(output_dir), **kwargs)
    except (ValueError, TypeError, ImportError) as exc:
        raise UserError(f"The Trainer rejected the settings: {exc}") from exc


def classification_metrics(eval_pred) -> dict[str, float]:
    """Accuracy and macro-F1, computed here (nothing is fetched from a hub)."""
    logits, labels = eval_pred
    logits = logits[0] if isinstance(logits, tuple) else logits
    predictions = np.asarray(logits).argmax(axis=-1)
    labels = np.asarray(labels)
    f1s = []
    for cls in np.unique(np.concatenate([labels, predictions])):
        tp = np.sum((predictions == cls) & (labels == cls))
        fp = np.sum((predictions == cls) & (labels != cls))
        fn = np.sum((predictions != cls) & (labels == cls))
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return {"accuracy": float(np.mean(predictions == labels)), "f1_macro": float(np.mean(f1s))}


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


def build_trainer(args: TrainingArguments, model, tokenizer, train_ds, eval_ds, collator, callbacks) -> Trainer:
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        data_collator=collator,
        compute_metrics=classification_metrics,
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)  # MetricLines prints the same entries, parseably
    return trainer


class RunClock(TrainerCallback):
    """Seconds from process start to the first optimizer step of this attempt."""

    def __init__(self, started: float):
        self.started = started
        self.first_step_s: float | None = None

    def on_step_end(self, args, state, control, **kwargs):
        if self.first_step_s is None:
            self.first_step_s = time.monotonic() - self.started
        return control
