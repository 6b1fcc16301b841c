"""Every setting of a job, declared once.

Settings come from `FT_<NAME>` environment variables and, on SageMaker, from
hyperparameters.json under the same names in lower case without the prefix. Precedence:
environment > hyperparameters > platform defaults (runtime.Runtime.platform_defaults) > defaults.
Besides the job's own settings, every `transformers.TrainingArguments` field is a setting under its
own name (FT_LEARNING_RATE, FT_SAVE_STEPS, ...), except the few this program controls itself.
All problems are collected and reported together, before anything is downloaded.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import functools
import json
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, Optional

import pydantic
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from entrypoint.config.platform import Runtime
from entrypoint.errors import SettingsError

PREFIX = "FT_"
TASKS = ("sequence-classification", "causal-lm", "masked-lm", "seq2seq")

# TrainingArguments fields this program sets itself; a user setting them gets told why.
RESERVED = {
    "output_dir": "use FT_OUTPUT_URI for the model and FT_CHECKPOINT_URI for checkpoints",
    "resume_from_checkpoint": "resuming is automatic: the newest complete checkpoint under FT_CHECKPOINT_URI is used",
    "local_rank": "set by the launcher",
    "do_train": "has no effect on the Trainer",
    "do_eval": "has no effect on the Trainer; set FT_EVAL_STRATEGY",
    "do_predict": "has no effect on the Trainer",
}
# Seq2SeqTrainingArguments' own fields (generation during evaluation): FT_TASK=seq2seq only.
SEQ2SEQ_ONLY = {
    "predict_with_generate",
    "generation_max_length",
    "generation_num_beams",
    "generation_config",
    "sortish_sampler",
}
# Variables under our prefix that are not settings (read by tools around the job).
NOT_SETTINGS: set[str] = set()
# TrainingArguments' field names as of the transformers version the image installs, for a light
# install without transformers (`finetune submit` from CI checks setting names with it). A test
# keeps it equal to the installed transformers; regenerate with `finetune settings --names-json`.
TRAINING_ARGUMENT_NAMES_FILE = Path(__file__).with_name("training_argument_names.json")
# Keys SageMaker itself may add to hyperparameters.json.
SAGEMAKER_HYPERPARAMETER_PREFIXES = ("sagemaker_", "_tuning_objective_metric")


class JobSettings(BaseSettings):
    """The job's own settings (not TrainingArguments)."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="forbid", frozen=True, validate_default=True)

    model: str = Field(
        description="Base model: an S3 prefix or a local folder holding a `save_pretrained` model and its tokenizer."
    )
    task: Literal[TASKS] = Field("sequence-classification", description="What to fine-tune for.")  # type: ignore[valid-type]
    train_data: str = Field(
        description="Training data: a csv, jsonl/json or parquet file, or a prefix/folder of them (S3 or local)."
    )
    eval_data: str | None = Field(None, description="Evaluation data, same forms as FT_TRAIN_DATA. Optional.")
    validation_split: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Hold out this fraction of the training data for evaluation when FT_EVAL_DATA is not given.",
    )
    text_column: str = Field("text", description="Column with the input text.")
    text_pair_column: str | None = Field(
        None, description="Column with the second text of a pair (e.g. NLI). Optional."
    )
    label_column: str = Field(
        "label", description="Column with the label: integers, or strings mapped to ids (stored in the model config)."
    )
    max_length: int | None = Field(
        None,
        gt=0,
        description="Truncate inputs to this many tokens (default: the tokenizer's limit, at most 512). Padding is dynamic, per batch.",
    )
    class_weights: str | None = Field(
        None,
        description="sequence-classification: `auto` (inverse label frequency) or one comma-separated weight per label, for a class-weighted loss.",
    )
    mlm_probability: float = Field(0.15, gt=0, lt=1, description="masked-lm: fraction of tokens masked.")
    prompt_column: str | None = Field(
        None,
        description="causal-lm instruction data: the prompt column (with FT_RESPONSE_COLUMN); the loss covers the response only.",
    )
    response_column: str | None = Field(None, description="causal-lm instruction data: the response column.")
    messages_column: str | None = Field(
        None,
        description="causal-lm chat data: a column of [{role, content}] lists, rendered with the tokenizer's chat template; the loss covers assistant turns only.",
    )
    packing: bool = Field(
        False, description="causal-lm plain text: pack short examples into full FT_MAX_LENGTH blocks."
    )
    source_column: str = Field("source", description="seq2seq: the input text column.")
    target_column: str = Field("target", description="seq2seq: the output text column.")
    lora_r: int | None = Field(
        None, gt=0, description="LoRA rank; setting it trains LoRA adapters (peft) instead of the full model."
    )
    lora_alpha: int | None = Field(None, gt=0, description="LoRA alpha (default: 2 × FT_LORA_R).")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout.")
    lora_target_modules: list[str] | None = Field(
        None,
        description="Modules that get adapters, comma-separated (default: peft's choice for the architecture, else every linear layer).",
    )
    load_in_4bit: bool = Field(
        False, description="QLoRA: load the base model in 4 bits (bitsandbytes, CUDA only); needs FT_LORA_R."
    )
    merge_adapter: bool = Field(
        False,
        description="With LoRA: write the adapter merged into the base model as the output (else the adapter alone).",
    )
    early_stopping_patience: int | None = Field(
        None,
        gt=0,
        description="Stop after this many evaluations without improvement of FT_METRIC_FOR_BEST_MODEL (needs FT_LOAD_BEST_MODEL_AT_END).",
    )
    tune_trials: int = Field(10, gt=0, description="`finetune tune`: number of Optuna trials.")
    tune_metric: str | None = Field(
        None,
        description="`finetune tune`: the eval metric to optimise (default: the task's, e.g. eval_accuracy; eval_loss for LM tasks).",
    )
    tune_direction: Literal["minimize", "maximize"] | None = Field(
        None, description="`finetune tune`: default maximize for accuracy/F1/BLEU, minimize for losses and perplexity."
    )
    tune_search_space: str | None = Field(
        None,
        description='`finetune tune`: JSON {"learning_rate": {"low": 1e-5, "high": 1e-4, "log": true}, "per_device_train_batch_size": {"choices": [8, 16]}} (default: learning rate, epochs, weight decay, warmup).',
    )
    num_processes: int | None = Field(
        None, gt=0, description="Training processes on this machine (default: one per visible GPU, else 1)."
    )
    output_uri: str = Field(
        "finetune-output",
        description="Where the fine-tuned model and metrics.json go: an S3 prefix or a local folder. SageMaker: /opt/ml/model.",
    )
    checkpoint_uri: str | None = Field(
        None,
        description="Where checkpoints are kept for resuming: an S3 prefix or a local folder. Default: `checkpoints/` under FT_OUTPUT_URI; SageMaker: /opt/ml/checkpoints.",
    )
    work_dir: str = Field(
        "/tmp/finetune", description="Local scratch folder for downloads and the Trainer's own checkpoints."
    )
    checkpoint_keep_last: int = Field(
        2,
        ge=1,
        description="Complete checkpoints kept at FT_CHECKPOINT_URI (plus the best one with FT_LOAD_BEST_MODEL_AT_END), independent of FT_SAVE_TOTAL_LIMIT.",
    )
    transfer_concurrency: int = Field(8, ge=1, le=64, description="Parallel S3 transfers (files and multipart parts).")
    spot_notice_poll_seconds: float = Field(
        5.0, gt=0, description="How often the EC2 spot interruption notice is polled (AWS Batch/EC2 only)."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")

    @field_validator("lora_target_modules", mode="before")
    @classmethod
    def _split_modules(cls, value):
        return _split_list(value)

    @field_validator("model", "train_data", "eval_data", "output_uri", "checkpoint_uri", "work_dir")
    @classmethod
    def _not_blank(cls, value):
        if value is not None and not str(value).strip():
            raise ValueError("must not be empty")
        return value

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, **_sources):
        # Values are gathered from the given mapping by load_settings (not from os.environ), so
        # the whole loading stays a pure function that tests call with a dict.
        return (init_settings,)


def _simplify(annotation: Any) -> Any:
    """A pydantic-friendly type for a TrainingArguments field annotation (all optional: None means
    "not set, keep the Trainer's default")."""
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    members = [a for a in args if a is not type(None)] if origin in (typing.Union, types.UnionType) else [annotation]
    if any(m is bool for m in members):
        return Optional[bool]
    if members == [int]:
        return Optional[int]
    if any(m is float for m in members):
        return Optional[float]
    if any(typing.get_origin(m) is list for m in members):
        return Optional[list[str]]
    if any(m is dict or typing.get_origin(m) is dict for m in members):
        return Optional[str]  # JSON text or a path: TrainingArguments parses it
    if all(m is str or (isinstance(m, type) and issubclass(m, enum.Enum)) for m in members):
        return Optional[str]
    if members == [int] or any(m is int for m in members):
        return Optional[int]
    return Optional[str]


@functools.lru_cache(maxsize=1)
def training_argument_fields() -> dict[str, Any]:
    """TrainingArguments' fields that are settings, with the type each is validated as."""
    from transformers import Seq2SeqTrainingArguments

    fields = {}
    for f in dataclasses.fields(Seq2SeqTrainingArguments):
        if f.init and not f.name.startswith("_") and f.name not in RESERVED:
            fields[f.name] = _simplify(f.type)
    return fields


def _split_list(value):
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


@functools.lru_cache(maxsize=1)
def settings_class() -> type[JobSettings]:
    """JobSettings extended with one optional field per TrainingArguments field."""
    extra = {}
    validators = {}
    for name, annotation in training_argument_fields().items():
        if name in JobSettings.model_fields:
            continue
        extra[name] = (annotation, Field(None, description=f"TrainingArguments.{name}"))
        if annotation == Optional[list[str]]:
            validators[f"_split_{name}"] = field_validator(name, mode="before")(_split_list)
    return pydantic.create_model("Settings", __base__=JobSettings, __validators__=validators, **extra)


def training_argument_names() -> set[str]:
    """The names of the TrainingArguments fields that are settings: from the installed
    transformers, or from the list shipped with this package where transformers is not installed."""
    try:
        return set(training_argument_fields())
    except ImportError:
        shipped = json.loads(TRAINING_ARGUMENT_NAMES_FILE.read_text())["names"]
        return {name for name in shipped if name not in RESERVED}


def all_training_argument_names() -> list[str]:
    """Every init field of Seq2SeqTrainingArguments (what TRAINING_ARGUMENT_NAMES_FILE holds)."""
    from transformers import Seq2SeqTrainingArguments

    return sorted(f.name for f in dataclasses.fields(Seq2SeqTrainingArguments) if f.init and not f.name.startswith("_"))


def setting_names() -> set[str]:
    """Every setting's name (lower case, without the prefix); needs no transformers."""
    return set(JobSettings.model_fields) | training_argument_names()


def _did_you_mean(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.75)
    return f" Did you mean {PREFIX}{close[0].upper()}?" if close else ""


def check_setting_names(names: Iterable[str]) -> list[str]:
    """Problems with setting names given lower-case without the prefix (e.g. 'learning_rate')."""
    known = setting_names()
    problems = []
    for name in names:
        if name in RESERVED:
            problems.append(f"{PREFIX}{name.upper()} cannot be set: {RESERVED[name]}.")
        elif name not in known:
            problems.append(f"{PREFIX}{name.upper()} is not a setting.{_did_you_mean(name, known)}")
    return problems


def _describe_error(err: dict, source: Mapping[str, str]) -> str:
    name = str(err["loc"][0]) if err["loc"] else "?"
    var = f"{PREFIX}{name.upper()}"
    if err["type"] == "missing":
        return f"{var} is required: {settings_class().model_fields[name].description}"
    got = source.get(name, err.get("input"))
    message = err["msg"]
    message = message[0].lower() + message[1:] if message else message
    return f"{var} is invalid ({message}); got {got!r}."


def load_settings(environ: Mapping[str, str], runtime: Runtime) -> JobSettings:
    """The validated settings, or SettingsError listing every problem found."""
    from_env = {key[len(PREFIX) :].lower(): value for key, value in environ.items() if key.startswith(PREFIX)}
    from_env = {k: v for k, v in from_env.items() if k not in NOT_SETTINGS}
    from_hyper = {
        k: v for k, v in runtime.hyperparameters.items() if not k.startswith(SAGEMAKER_HYPERPARAMETER_PREFIXES)
    }
    problems = check_setting_names(from_env) + [
        p.replace(PREFIX, "hyperparameter ", 1) for p in check_setting_names(from_hyper)
    ]
    known = setting_names()
    merged: dict[str, Any] = dict(runtime.platform_defaults())
    merged.update({k: v for k, v in from_hyper.items() if k in known})
    merged.update({k: v for k, v in from_env.items() if k in known})
    merged = {
        k: v for k, v in merged.items() if not (isinstance(v, str) and v == "" and k not in JobSettings.model_fields)
    }
    settings = None
    try:
        settings = settings_class()(**merged)
    except pydantic.ValidationError as exc:
        problems += [_describe_error(e, merged) for e in exc.errors()]
    if settings is not None:
        problems += cross_checks(settings, runtime)
    if problems:
        raise SettingsError(problems)
    return settings


def cross_checks(settings: JobSettings, runtime: Runtime) -> list[str]:
    """Problems that involve more than one setting or the platform."""
    problems = []
    if settings.eval_data and settings.validation_split:
        problems.append("FT_VALIDATION_SPLIT and FT_EVAL_DATA are both set: give one of them.")
    if runtime.platform == "batch" and not settings.output_uri.startswith("s3://"):
        problems.append(
            f"FT_OUTPUT_URI must be an s3:// URI on AWS Batch (got {settings.output_uri!r}): the container's disk is lost when the job ends."
        )
    ta = trainer_overrides(settings)
    lora_only = [
        name
        for name in ("lora_alpha", "lora_target_modules", "load_in_4bit", "merge_adapter")
        if name in settings.model_fields_set and getattr(settings, name)
    ]
    if lora_only and settings.lora_r is None:
        problems.append(f"{', '.join(PREFIX + n.upper() for n in lora_only)} need LoRA: set FT_LORA_R (e.g. 16).")
    if settings.class_weights and settings.task != "sequence-classification":
        problems.append("FT_CLASS_WEIGHTS applies to FT_TASK=sequence-classification only.")
    if settings.task == "causal-lm" and bool(settings.prompt_column) != bool(settings.response_column):
        problems.append(
            "FT_PROMPT_COLUMN and FT_RESPONSE_COLUMN go together: set both (instruction data) or neither (plain text)."
        )
    if settings.early_stopping_patience and not ta.get("load_best_model_at_end"):
        problems.append(
            "FT_EARLY_STOPPING_PATIENCE needs FT_LOAD_BEST_MODEL_AT_END=true (and FT_EVAL_STRATEGY with evaluation data)."
        )
    if (
        ta.get("load_best_model_at_end")
        and (ta.get("eval_strategy") in (None, "no"))
        and not (settings.eval_data or settings.validation_split)
    ):
        problems.append(
            "FT_LOAD_BEST_MODEL_AT_END needs evaluation: set FT_EVAL_DATA or FT_VALIDATION_SPLIT, and FT_EVAL_STRATEGY."
        )
    if (ta.get("eval_strategy") not in (None, "no")) and not (settings.eval_data or settings.validation_split):
        problems.append(
            f"FT_EVAL_STRATEGY={ta['eval_strategy']} needs evaluation data: set FT_EVAL_DATA or FT_VALIDATION_SPLIT."
        )
    return problems


def trainer_overrides(settings: JobSettings) -> dict[str, Any]:
    """The TrainingArguments the user set explicitly (None means keep the Trainer's default)."""
    names = training_argument_fields()
    return {
        name: getattr(settings, name)
        for name in names
        if name not in JobSettings.model_fields and getattr(settings, name, None) is not None
    }


def settings_table() -> list[tuple[str, str, str]]:
    """(variable, default, description) for the job's own settings, for the README."""
    rows = []
    for name, field in JobSettings.model_fields.items():
        default = "required" if field.is_required() else repr(field.default) if field.default is not None else "unset"
        rows.append((f"{PREFIX}{name.upper()}", default, field.description or ""))
    return rows


def checkpoint_uri(settings: JobSettings) -> str:
    """FT_CHECKPOINT_URI, or `checkpoints/` under FT_OUTPUT_URI."""
    return settings.checkpoint_uri or _under(settings.output_uri, "checkpoints/")


def tensorboard_uri(settings: JobSettings, runtime: Runtime) -> str:
    """Where TensorBoard event files go: SageMaker's TensorBoard output folder there, else
    `tensorboard/` under FT_OUTPUT_URI."""
    if runtime.sagemaker is not None:
        return str(runtime.sagemaker.tensorboard_dir)
    return _under(settings.output_uri, "tensorboard/")


def _under(base: str, name: str) -> str:
    return (base if base.endswith("/") else base + "/") + name
