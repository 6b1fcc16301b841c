"""The Trainer: arguments from the settings, metrics, and the callbacks that connect it to
checkpoint sync, stop requests and the metric log lines."""
from __future__ import annotations

import logging
import time
from pathlib import Path

from transformers import PrinterCallback, Seq2SeqTrainingArguments, Trainer, TrainerCallback, TrainingArguments

from . import modeling, reporting
from .checkpoints import CheckpointSync
from .errors import UserError
from .settings import SEQ2SEQ_ONLY, JobSettings, trainer_overrides

log = logging.getLogger(__name__)

# Where this program's defaults differ from the Trainer's, and why.
DEFAULTS = {
    "save_total_limit": 2,  # local scratch only: retention at FT_CHECKPOINT_URI is FT_CHECKPOINT_KEEP_LAST
    "disable_tqdm": True,  # progress bars flood CloudWatch; the [metrics] lines report progress
    "logging_steps": 50,
}


def training_arguments(settings: JobSettings, output_dir: Path, cuda: bool, seq2seq: bool = False) -> TrainingArguments:
    """(Seq2Seq)TrainingArguments from the settings; a rejected combination is the user's error."""
    overrides = trainer_overrides(settings)
    if not seq2seq:
        wrong = sorted(set(overrides) & SEQ2SEQ_ONLY)
        if wrong:
            raise UserError(f"{', '.join('FT_' + w.upper() for w in wrong)} only apply to FT_TASK=seq2seq.")
    kwargs = dict(DEFAULTS, dataloader_pin_memory=cuda)
    kwargs.update(modeling.precision(overrides.pop("bf16", None), overrides.pop("fp16", None)))
    kwargs.update(overrides)
    arguments_class = Seq2SeqTrainingArguments if seq2seq else TrainingArguments
    try:
        return arguments_class(output_dir=str(output_dir), **kwargs)
    except (ValueError, TypeError, ImportError) as exc:
        raise UserError(f"The Trainer rejected the settings: {exc}") from exc


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


def build_trainer(task, settings, info: dict, args, model, tokenizer, train_ds, eval_ds, callbacks) -> Trainer:
    """The task's Trainer class with its collator and metrics, and our callbacks."""
    trainer_cls, extra = task.trainer(settings, info)
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        data_collator=task.collator(tokenizer, model, settings),
        compute_metrics=task.metrics(tokenizer, settings, info) if eval_ds is not None else None,
        callbacks=callbacks,
        **extra,
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
