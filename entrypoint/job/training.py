"""The Trainer: arguments from the settings, metrics, and the callbacks that connect it to
checkpoint sync, stop requests and the metric log lines."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from transformers import PrinterCallback, Seq2SeqTrainingArguments, Trainer, TrainingArguments

from entrypoint.config.settings import SEQ2SEQ_ONLY, JobSettings, trainer_overrides
from entrypoint.errors import SettingsError, UserError
from entrypoint.io import storage
from entrypoint.job import modeling

log = logging.getLogger(__name__)

# Where this program's defaults differ from the Trainer's, and why.
DEFAULTS = {
    "save_total_limit": 2,  # local scratch only: retention at FT_CHECKPOINT_URI is FT_CHECKPOINT_KEEP_LAST
    "disable_tqdm": True,  # progress bars flood CloudWatch; the [metrics] lines report progress
    "logging_steps": 50,
}


@dataclasses.dataclass(frozen=True)
class Hardware:
    cuda: bool
    packages: frozenset[str]  # optional packages importable here

    @classmethod
    def here(cls) -> Hardware:
        import importlib.util

        import torch

        wanted = ("bitsandbytes", "deepspeed", "tensorboard")
        return cls(cuda=torch.cuda.is_available(), packages=frozenset(p for p in wanted if importlib.util.find_spec(p)))


def hardware_problems(kwargs: dict, hw: Hardware) -> list[str]:
    """Settings that cannot work on this machine, each with the fix (pure)."""
    problems = []
    if kwargs.get("fp16") and not hw.cuda:
        problems.append("FT_FP16=true needs a CUDA GPU; on CPU leave it unset (fp32) or set FT_BF16=true.")
    optim = str(kwargs.get("optim") or "")
    if any(word in optim for word in ("8bit", "bnb", "paged")) and not (hw.cuda and "bitsandbytes" in hw.packages):
        problems.append(
            f"FT_OPTIM={optim} needs a CUDA GPU and the bitsandbytes package; use adamw_torch or adafactor here."
        )
    if str(kwargs.get("ddp_backend") or "") == "nccl" and not hw.cuda:
        problems.append("FT_DDP_BACKEND=nccl needs CUDA GPUs; use gloo on CPU.")
    if kwargs.get("deepspeed") and "deepspeed" not in hw.packages:
        problems.append("FT_DEEPSPEED needs the deepspeed package (pip install deepspeed, on a GPU image).")
    report_to = kwargs.get("report_to") or []
    if "tensorboard" in ([report_to] if isinstance(report_to, str) else report_to) and "tensorboard" not in hw.packages:
        problems.append("FT_REPORT_TO=tensorboard needs the tensorboard package (pip install tensorboard).")
    return problems


def arguments_for(settings: JobSettings, task, output_dir: Path) -> TrainingArguments:
    """The TrainingArguments of `task`'s Trainer on this machine, checkpoints in `output_dir`."""
    import torch

    return training_arguments(
        settings, output_dir, torch.cuda.is_available(), task.seq2seq_arguments, task.metric_for_best_model
    )


def training_arguments(
    settings: JobSettings,
    output_dir: Path,
    cuda: bool,
    seq2seq: bool = False,
    best_metric: str = "loss",
    hw: Hardware | None = None,
) -> TrainingArguments:
    """(Seq2Seq)TrainingArguments from the settings; a rejected combination is the user's error."""
    overrides = trainer_overrides(settings)
    if not seq2seq:
        wrong = sorted(set(overrides) & SEQ2SEQ_ONLY)
        if wrong:
            raise UserError(f"{', '.join('FT_' + w.upper() for w in wrong)} only apply to FT_TASK=seq2seq.")
    kwargs = dict(DEFAULTS, dataloader_pin_memory=cuda)
    kwargs.update(modeling.precision(overrides.pop("bf16", None), overrides.pop("fp16", None)))
    if overrides.get("load_best_model_at_end") and not overrides.get("metric_for_best_model"):
        kwargs["metric_for_best_model"] = best_metric
    if settings.early_stopping_patience:
        # The patience counter lives in the callback: restore it on resume, or a resumed run would
        # stop later than an uninterrupted one.
        kwargs["restore_callback_states_from_checkpoint"] = True
    kwargs.update(overrides)
    if str(kwargs.get("deepspeed") or "").startswith("s3://"):
        kwargs["deepspeed"] = str(storage.fetch(kwargs["deepspeed"], output_dir.parent / "deepspeed"))
    problems = hardware_problems(kwargs, hw or Hardware.here())
    if problems:
        raise SettingsError(problems)
    arguments_class = Seq2SeqTrainingArguments if seq2seq else TrainingArguments
    try:
        return arguments_class(output_dir=str(output_dir), **kwargs)
    except (ValueError, TypeError, ImportError) as exc:
        raise UserError(f"The Trainer rejected the settings: {exc}") from exc


def build_trainer(task, settings, info: dict, args, model, tokenizer, train_ds, eval_ds, callbacks) -> Trainer:
    """The task's Trainer class with its collator and metrics, and our callbacks."""
    trainer_cls, extra = task.trainer(settings, info)
    try:
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
    except (
        ValueError
    ) as exc:  # the Trainer's own checks of model and arguments (e.g. a quantized base without adapters)
        raise UserError(f"The Trainer cannot train FT_MODEL with these settings: {exc}") from exc
    trainer.remove_callback(PrinterCallback)  # MetricLines prints the same entries, parseably
    return trainer
