"""The Trainer: arguments from the settings, metrics, and the callbacks that connect it to
checkpoint sync, stop requests and the metric log lines."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from pathlib import Path

from transformers import PrinterCallback, Seq2SeqTrainingArguments, Trainer, TrainingArguments

from entrypoint.config.settings import JobSettings, trainer_overrides
from entrypoint.config.trainer_fields import DEFAULTS, SEQ2SEQ_ONLY, TRAINER_FIELDS
from entrypoint.errors import SettingsError, UserError
from entrypoint.io import storage
from entrypoint.job import gpu_defaults, modeling
from entrypoint.job.gpu_defaults import GpuInfo
from entrypoint.tasks import lengths

log = logging.getLogger(__name__)

# FT_REPORT_TO integrations checked up front (the Trainer would fail only after the downloads), and
# how to install each.
REPORT_TO_PACKAGES = {
    "tensorboard": "pip install tensorboard",
    "mlflow": "pip install 'finetune[mlflow]'",
    "wandb": "pip install 'finetune[wandb]'",
}


# The package each FT_REPORT_TO integration needs (transformers' is_*_available look for these).
INTEGRATION_MODULES = {
    "azure_ml": "azureml",
    "clearml": "clearml",
    "codecarbon": "codecarbon",
    "comet_ml": "comet_ml",
    "dagshub": "dagshub",
    "dvclive": "dvclive",
    "flyte": "flytekit",
    "mlflow": "mlflow",
    "neptune": "neptune",
    "swanlab": "swanlab",
    "tensorboard": "tensorboard",
    "trackio": "trackio",
    "wandb": "wandb",
}


@dataclasses.dataclass(frozen=True)
class Hardware:
    cuda: bool
    packages: frozenset[str]  # optional packages importable here

    @classmethod
    def here(cls) -> Hardware:
        import importlib.util

        import torch

        wanted = ("bitsandbytes", "deepspeed", "flash_attn", "liger_kernel")
        found = {p for p in wanted if importlib.util.find_spec(p)}
        # The reporting integrations installed, under their FT_REPORT_TO names. Not through
        # transformers' get_available_reporting_integrations: that imports wandb (~3 s).
        found |= {name for name, module in INTEGRATION_MODULES.items() if importlib.util.find_spec(module)}
        return cls(cuda=torch.cuda.is_available(), packages=frozenset(found))


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
    if kwargs.get("fsdp") and not hw.cuda:  # accelerate runs plain DDP on CPUs (MULTI_CPU), silently unsharded
        problems.append(
            "FT_FSDP needs CUDA GPUs: on CPU accelerate ignores FSDP and trains unsharded DDP; "
            "leave FT_FSDP unset here."
        )
    if kwargs.get("deepspeed") and "deepspeed" not in hw.packages:
        problems.append("FT_DEEPSPEED needs the deepspeed package (pip install deepspeed, on a GPU image).")
    report_to = kwargs.get("report_to") or []
    for name in [report_to] if isinstance(report_to, str) else report_to:
        if name not in ("all", "none", "kubeflow") and name not in hw.packages:  # kubeflow: a variable, no package
            install = REPORT_TO_PACKAGES.get(name, f"pip install {name}")
            problems.append(f"FT_REPORT_TO={name} needs the {name} package ({install}).")
    if kwargs.get("use_liger_kernel") and "liger_kernel" not in hw.packages:
        problems.append("FT_USE_LIGER_KERNEL=true needs the liger-kernel package (pip install liger-kernel).")
    return problems


def missing_files(kwargs: dict) -> list[str]:
    """Settings that name a file (FT_ACCELERATOR_CONFIG, FT_FSDP_CONFIG, FT_DEEPSPEED,
    FT_GENERATION_CONFIG) that this machine does not have: the Trainer would read it only after the
    downloads."""
    problems = []
    for name, rule in TRAINER_FIELDS.items():
        value = kwargs.get(name)
        if not rule.value or rule.value == "json" or not isinstance(value, str):
            continue
        if rule.value == "path" and not Path(value).expanduser().exists():
            problems.append(
                f"FT_{name.upper()}: {value} does not exist on this machine. Give a file or folder the image holds."
            )
        elif rule.value != "path" and not value.strip().startswith("{") and not Path(value).expanduser().is_file():
            also = " or an s3:// URI" if rule.value == "json-path-or-s3" else ""
            problems.append(
                f"FT_{name.upper()}: {value} does not exist on this machine. Give the JSON itself "
                f"(FT_{name.upper()}='{{...}}'){also}, or a file the image holds."
            )
    return problems


TRAINER_FLAG = re.compile(r"--([a-z][a-z0-9_]*)")


def in_our_words(message: str) -> str:
    """The Trainer's message with its command-line flags (--save_steps) as our settings (FT_SAVE_STEPS)."""
    return TRAINER_FLAG.sub(lambda m: f"FT_{m.group(1).upper()}", message)


def arguments_for(settings: JobSettings, task, output_dir: Path, dataloader_workers: int = 0) -> TrainingArguments:
    """The TrainingArguments of `task`'s Trainer on this machine, checkpoints in `output_dir`."""
    import torch

    return training_arguments(
        settings,
        output_dir,
        torch.cuda.is_available(),
        task.seq2seq_arguments,
        task.metric_for_best_model,
        task_defaults=task.argument_defaults,
        dataloader_workers=dataloader_workers,
        eval_batch_scale=task.eval_batch_scale,
    )


def training_arguments(
    settings: JobSettings,
    output_dir: Path,
    cuda: bool,
    seq2seq: bool = False,
    best_metric: str = "loss",
    hw: Hardware | None = None,
    task_defaults: dict | None = None,
    dataloader_workers: int = 0,
    gpu: GpuInfo | None = None,
    eval_batch_scale: int = 1,
) -> TrainingArguments:
    """(Seq2Seq)TrainingArguments from the settings; a rejected combination is the user's error.
    `dataloader_workers`: the default of FT_DATALOADER_NUM_WORKERS (parallel/cpus.py sizes it)."""
    overrides = trainer_overrides(settings)
    if overrides.pop("hub_token", None) is not None:  # a secret the Trainer would pickle: see trainer_fields
        log.warning(
            "FT_HUB_TOKEN is not passed to the Trainer: it would only serve a push to the Hub, which finetune does "
            "not do (Hub downloads use HF_TOKEN)"
        )
    for name, rule in TRAINER_FIELDS.items():  # JSON the Trainer does not parse itself (liger_kernel_config)
        if rule.kind == "adjusted" and rule.value == "json" and isinstance(overrides.get(name), str):
            overrides[name] = json.loads(overrides[name])
    if not seq2seq:
        wrong = sorted(set(overrides) & SEQ2SEQ_ONLY)
        if wrong:
            raise UserError(f"{', '.join('FT_' + w.upper() for w in wrong)} only apply to FT_TASK=seq2seq.")
    kwargs = dict(
        DEFAULTS, **(task_defaults or {}), dataloader_pin_memory=cuda, dataloader_num_workers=dataloader_workers
    )
    for note in lengths.default_notes(task_defaults or {}, overrides):  # what changes batches, and the way back
        log.info(note)
    if eval_batch_scale > 1 and "per_device_eval_batch_size" not in overrides:
        train_batch = int(overrides.get("per_device_train_batch_size", kwargs.get("per_device_train_batch_size", 8)))
        kwargs["per_device_eval_batch_size"] = eval_batch_scale * train_batch
        log.info(lengths.EVAL_BATCH_MESSAGE, kwargs["per_device_eval_batch_size"], eval_batch_scale)
    hw = hw or Hardware.here()
    gpu = (gpu or GpuInfo.here()) if cuda else None  # `gpu`: injected by tests
    on_gpu = gpu_defaults.for_job(settings, overrides, kwargs, gpu, hw.packages)  # bf16, TF32, ...; logged
    kwargs.update(modeling.precision(overrides.pop("bf16", None), overrides.pop("fp16", None)), **on_gpu)
    if overrides.get("load_best_model_at_end") and not overrides.get("metric_for_best_model"):
        kwargs["metric_for_best_model"] = best_metric
    if settings.early_stopping_patience:
        # The patience counter lives in the callback: restore it on resume, or a resumed run would
        # stop later than an uninterrupted one.
        kwargs["restore_callback_states_from_checkpoint"] = True
    kwargs.update(overrides)
    if str(kwargs.get("deepspeed") or "").startswith("s3://"):
        kwargs["deepspeed"] = str(
            storage.fetch(kwargs["deepspeed"], output_dir.parent / "deepspeed", label="FT_DEEPSPEED")
        )
    problems = hardware_problems(kwargs, hw) + missing_files(kwargs)
    if problems:
        raise SettingsError(problems)
    arguments_class = Seq2SeqTrainingArguments if seq2seq else TrainingArguments
    try:
        return arguments_class(output_dir=str(output_dir), **kwargs)
    except (ValueError, TypeError, ImportError) as exc:
        raise UserError(f"The Trainer rejected the settings: {in_our_words(str(exc))}") from exc


def build_trainer(task, settings, info: dict, args, model, tokenizer, train_ds, eval_ds, callbacks) -> Trainer:
    """The task's Trainer class with its collator and metrics, and our callbacks."""
    gpu_defaults.apply_attention(model, settings, args, GpuInfo.here(), Hardware.here().packages)
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
