"""Every setting of a job, declared once.

Settings come from `FT_<NAME>` environment variables and, on SageMaker, from
hyperparameters.json under the same names in lower case without the prefix, and from the file that
FT_CONFIG names (config/files.py). Precedence: environment > hyperparameters > FT_CONFIG file >
platform defaults (runtime.Runtime.platform_defaults) > defaults.
Besides the job's own settings, every `transformers.TrainingArguments` field is a setting under its
own name (FT_LEARNING_RATE, FT_SAVE_STEPS, ...), except those trainer_fields.TRAINER_FIELDS refuses;
the values of the others are checked as that table says. All problems are collected and reported
together, before anything is downloaded.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import functools
import json
import re
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import pydantic
from pydantic import Field, field_validator
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from entrypoint.config import files, sensitive
from entrypoint.config.platform import Runtime
from entrypoint.config.trainer_fields import REFUSED, TRAINER_FIELDS, Decision, refusal
from entrypoint.errors import SettingsError, UserError

PREFIX = "FT_"
TASKS = ("sequence-classification", "causal-lm", "masked-lm", "seq2seq")
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
        description=(
            "Base model: an S3 prefix or a local folder holding a `save_pretrained` model and its tokenizer, or a "
            "Hugging Face Hub id `org/name[@revision]` (mirrored at FT_CACHE_URI on first use)."
        )
    )
    task: Literal[TASKS] = Field("sequence-classification", description="What to fine-tune for.")  # type: ignore[valid-type]
    train_data: str = Field(
        description=(
            "Training data: a csv, jsonl/json or parquet file, or a prefix/folder of them (S3 or local), or "
            "`hf://datasets/org/name[@revision][/folder-or-glob]` on the Hugging Face Hub."
        )
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
        description=(
            "Truncate inputs to this many tokens (default: the tokenizer's limit, at most 512). Padding is dynamic, "
            "per batch."
        ),
    )
    class_weights: str | None = Field(
        None,
        description=(
            "sequence-classification: `auto` (inverse label frequency) or one comma-separated weight per label, for a "
            "class-weighted loss."
        ),
    )
    mlm_probability: float = Field(0.15, gt=0, lt=1, description="masked-lm: fraction of tokens masked.")
    prompt_column: str | None = Field(
        None,
        description=(
            "causal-lm instruction data: the prompt column (with FT_RESPONSE_COLUMN); the loss covers the response "
            "only."
        ),
    )
    response_column: str | None = Field(None, description="causal-lm instruction data: the response column.")
    messages_column: str | None = Field(
        None,
        description=(
            "causal-lm chat data: a column of [{role, content}] lists, rendered with the tokenizer's chat template; "
            "the loss covers assistant turns only."
        ),
    )
    packing: bool = Field(
        False, description="causal-lm plain text: pack short examples into full FT_MAX_LENGTH blocks."
    )
    padding_free: Literal["auto", "true", "false"] = Field(
        "auto",
        description=(
            "causal-lm: put each batch's examples end to end in one row, with position ids restarting at every "
            "example, instead of padding them (no cross-example attention, no padding computed). `auto`: on when the "
            "batch holds more than one example, FT_PACKING is off and a probe of the model shows flattened examples "
            "stay apart; else padding, with the reason logged."
        ),
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
        description=(
            "Modules that get adapters, comma-separated (default: peft's choice for the architecture, else every "
            "linear layer)."
        ),
    )
    load_in_4bit: bool = Field(
        False, description="QLoRA: load the base model in 4 bits (bitsandbytes, CUDA only); needs FT_LORA_R."
    )
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention"] | None = (
        Field(
            None,
            description=(
                "The model's attention implementation (from_pretrained's attn_implementation). Default: "
                "transformers' (SDPA where the model has it); on an Ampere or newer GPU with the flash_attn package "
                "and bf16/fp16, flash_attention_2 (see FT_GPU_DEFAULTS)."
            ),
        )
    )
    gpu_defaults: bool = Field(
        True,
        description=(
            "On a CUDA GPU, for settings left unset: bf16 (Ampere or newer), fused AdamW, TF32 (Ampere or newer), "
            "pinned memory, persistent data-loader workers (with workers), FlashAttention-2 where flash_attn is "
            "installed. Each is logged with the setting that turns it off; false turns them all off (fp32, the "
            "Trainer's own defaults). No effect on CPU."
        ),
    )
    merge_adapter: bool = Field(
        False,
        description="With LoRA: write the adapter merged into the base model as the output (else the adapter alone).",
    )
    early_stopping_patience: int | None = Field(
        None,
        gt=0,
        description=(
            "Stop after this many evaluations without improvement of FT_METRIC_FOR_BEST_MODEL (needs "
            "FT_LOAD_BEST_MODEL_AT_END)."
        ),
    )
    tune_trials: int = Field(10, gt=0, description="`finetune tune`: number of Optuna trials.")
    tune_metric: str | None = Field(
        None,
        description=(
            "`finetune tune`: the eval metric to optimise (default: the task's, e.g. eval_accuracy; eval_loss for LM "
            "tasks)."
        ),
    )
    tune_direction: Literal["minimize", "maximize"] | None = Field(
        None, description="`finetune tune`: default maximize for accuracy/F1/BLEU, minimize for losses and perplexity."
    )
    tune_search_space: str | None = Field(
        None,
        description=(
            '`finetune tune`: JSON {"learning_rate": {"low": 1e-5, "high": 1e-4, "log": true}, '
            '"per_device_train_batch_size": {"choices": [8, 16]}} (default: learning rate, epochs, weight decay, '
            "warmup)."
        ),
    )
    num_processes: int | None = Field(
        None, gt=0, description="Training processes on this machine (default: one per visible GPU, else 1)."
    )
    output_uri: str = Field(
        "finetune-output",
        description=(
            "Where the fine-tuned model and metrics.json go: an S3 prefix or a local folder. SageMaker: /opt/ml/model."
        ),
    )
    checkpoint_uri: str | None = Field(
        None,
        description=(
            "Where checkpoints are kept for resuming: an S3 prefix or a local folder. Default: `checkpoints/` under "
            "FT_OUTPUT_URI; SageMaker: /opt/ml/checkpoints."
        ),
    )
    cache_uri: str | None = Field(
        None,
        description=(
            "Where Hub mirrors and prepared (tokenized) data are kept: an S3 prefix or a local folder. Default: "
            "`cache/` under FT_OUTPUT_URI (SageMaker: under FT_CHECKPOINT_URI, which survives restarts). Share one "
            "between jobs to reuse them."
        ),
    )
    cache_prepared_data: bool = Field(
        True,
        description=(
            "Keep the tokenized data sets at FT_CACHE_URI and load them instead of preparing again when nothing that "
            "determines them changed (restarts, `finetune tune` trials, later jobs)."
        ),
    )
    allow_pickle_weights: bool = Field(
        False,
        description=(
            "Hub models without safetensors weights: accept pickle weight files (pytorch_model.bin). Loading pickle "
            "can run code: only for repositories you trust."
        ),
    )
    eval_sort_by_length: bool = Field(
        True,
        description=(
            "Evaluate in batches sorted by length, longest first (less padding; FT_TASK=sequence-classification, "
            "whose metrics do not depend on the batches). false: in the data's order."
        ),
    )
    preprocessing_num_workers: int | None = Field(
        None,
        gt=0,
        description=(
            "Processes that tokenize the data (default: one per CPU of the container's quota for large data sets, 1 "
            "for small ones)."
        ),
    )
    work_dir: str = Field(
        "/tmp/finetune", description="Local scratch folder for downloads and the Trainer's own checkpoints."
    )
    checkpoint_keep_last: int = Field(
        2,
        ge=1,
        description=(
            "Complete checkpoints kept at FT_CHECKPOINT_URI (plus the best one with FT_LOAD_BEST_MODEL_AT_END), "
            "independent of FT_SAVE_TOTAL_LIMIT."
        ),
    )
    transfer_concurrency: int = Field(8, ge=1, le=64, description="Parallel S3 transfers (files and multipart parts).")
    spot_notice_poll_seconds: float = Field(
        5.0, gt=0, description="How often the EC2 spot interruption notice is polled (AWS Batch/EC2 only)."
    )
    stop_grace_seconds: float | None = Field(
        None,
        gt=0,
        description=(
            "Seconds the platform leaves between a stop request (SIGTERM, spot notice) and killing the job: the stop "
            "checkpoint must be durable a little before, else the job exits 75 naming the newest durable one. "
            "Default: the time a spot notice gives; else SageMaker 120; AWS Batch 30 (ECS's default stop timeout; the "
            "Terraform module passes its own); else 30. Set, it also wins over the spot notice's time."
        ),
    )
    upload_timeout_seconds: float = Field(
        1800.0,
        gt=0,
        description=(
            "Longest time one checkpoint upload, or the wait for the last uploads when training ends, may take "
            "before it counts as stalled (at the end: exit 75, naming the newest durable checkpoint)."
        ),
    )
    stop_checkpoint: Literal["auto", "always"] = Field(
        "auto",
        description=(
            "`auto`: after a stop request, a checkpoint that cannot be durable before the platform's kill at the "
            "upload rate measured so far is not started (the upload in flight is finished instead, and the job exits "
            "143 with the newest durable step; an older upload in flight is abandoned when the stop checkpoint can "
            "make it only without it). `always`: the stop checkpoint is always tried."
        ),
    )
    assumed_upload_mb_per_s: float | None = Field(
        None,
        gt=0,
        description=(
            "The checkpoint upload rate (MB/s) assumed for planning a stop checkpoint before this attempt has "
            "measured one (FT_STOP_CHECKPOINT=auto). Unset: before the first upload a stop checkpoint is always tried."
        ),
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    config: str | None = Field(
        None,
        description=(
            "A YAML or JSON file of settings (names without FT_, e.g. `learning_rate: 3e-5`): a local path or an S3 "
            "URI. Environment and hyperparameters win over it; see Configuration files."
        ),
    )
    secrets: str | None = Field(
        None,
        description=(
            "Environment variables the job reads from AWS Secrets Manager or SSM Parameter Store as it starts: "
            "`NAME=ARN` pairs, comma-separated, or a JSON object, e.g. "
            "`HF_TOKEN=arn:aws:secretsmanager:us-east-1:123456789012:secret:hf-token-AbCdEf`. The values are never "
            "logged or written; see Secrets."
        ),
    )

    @field_validator("padding_free", mode="before")
    @classmethod
    def _tri_state(cls, value):
        if isinstance(value, bool):  # a JSON boolean from hyperparameters.json or a config file
            return str(value).lower()
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("lora_target_modules", mode="before")
    @classmethod
    def _split_modules(cls, value):
        return _split_list(value)

    @field_validator("model", "train_data", "eval_data", "output_uri", "checkpoint_uri", "cache_uri", "work_dir")
    @classmethod
    def _not_blank(cls, value):
        if value is not None and not str(value).strip():
            raise ValueError("must not be empty")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
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
        return bool | None
    if members == [int]:
        return int | None
    if any(m is float for m in members):
        return float | None
    if any(typing.get_origin(m) is list for m in members):
        return list[str] | None
    if any(m is dict or typing.get_origin(m) is dict for m in members):
        return str | None  # JSON text or a path: TrainingArguments parses it
    if all(m is str or (isinstance(m, type) and issubclass(m, enum.Enum)) for m in members):
        return str | None
    if members == [int] or any(m is int for m in members):
        return int | None
    return str | None


def _choices(annotation: Any, metadata: Mapping[str, Any], decision: Decision) -> tuple[str, ...]:
    """The text values a field accepts: the table's, else the field's metadata choices, else the
    values of the enum in its annotation (e.g. SchedulerType), also inside a list (DebugOption)."""
    if decision.choices:
        return decision.choices
    if "choices" in metadata:
        return tuple(str(c) for c in metadata["choices"])
    members = list(typing.get_args(annotation)) or [annotation]
    members += [inner for m in members if typing.get_origin(m) is list for inner in typing.get_args(m)]
    for member in members:
        if isinstance(member, type) and issubclass(member, enum.Enum):
            return tuple(str(e.value) for e in member)
    return ()


def _field_type(annotation: Any, metadata: Mapping[str, Any], decision: Decision) -> Any:
    """The type a TrainingArguments field is validated as, with the allowed values as a Literal."""
    simple = _simplify(annotation)
    if decision.secret:
        return pydantic.SecretStr | None
    choices = _choices(annotation, metadata, decision)
    if not choices:
        return simple
    literal = Literal[choices]  # type: ignore[valid-type]
    if simple == (list[str] | None):
        return list[literal] | None
    if simple == (bool | None):
        return literal | bool | None
    return literal | None


def decision(name: str) -> Decision:
    """The table's decision for a TrainingArguments field (one newer than the table: allowed; a
    test keeps the table complete for the transformers the image installs)."""
    return TRAINER_FIELDS.get(name, Decision("allowed"))


@functools.lru_cache(maxsize=1)
def training_argument_fields() -> dict[str, Any]:
    """TrainingArguments' fields that are settings, with the type each is validated as."""
    from transformers import Seq2SeqTrainingArguments

    fields = {}
    for f in dataclasses.fields(Seq2SeqTrainingArguments):
        if f.init and not f.name.startswith("_") and f.name not in REFUSED:
            fields[f.name] = _field_type(f.type, f.metadata, decision(f.name))
    return fields


def _check_value(name: str, rule: Decision) -> Callable[[Any], Any]:
    """A validator for the table's checks that pydantic's Field cannot say: a bound with an
    "unset" exception (max_steps=-1), and JSON text."""

    def check(value: Any) -> Any:
        if value is None or (rule.unset is not None and value == rule.unset):
            return value
        for op, limit in rule.bounds.items():
            if not {"gt": value > limit, "ge": value >= limit, "lt": value < limit, "le": value <= limit}[op]:
                word = {"gt": "greater than", "ge": "greater than or equal to", "lt": "less than", "le": "at most"}[op]
                unset = f", or {rule.unset} (unset)" if rule.unset is not None else ""
                raise ValueError(f"input should be {word} {limit:g}{unset}")
        if rule.value and isinstance(value, str):
            _check_json(value, rule)
        return value

    check.__name__ = f"_check_{name}"
    return check


def _check_json(text: str, rule: Decision) -> None:
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            parsed = json.loads(stripped)
        except ValueError as exc:
            raise ValueError(f"input should be a JSON object; the JSON is broken ({exc})") from None
        if not isinstance(parsed, dict):
            raise ValueError("input should be a JSON object")
    elif rule.value == "json":
        raise ValueError('input should be a JSON object, e.g. {"name": 1}')


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
    extra: dict[str, Any] = {}
    validators: dict[str, Callable[..., Any]] = {}
    for name, annotation in training_argument_fields().items():
        if name in JobSettings.model_fields:
            continue
        rule = decision(name)
        extra[name] = (annotation, Field(None, description=f"TrainingArguments.{name}"))
        if typing.get_origin(typing.get_args(annotation)[0]) is list:
            validators[f"_split_{name}"] = field_validator(name, mode="before")(_split_list)
        if rule.bounds or rule.value:
            validators[f"_check_{name}"] = field_validator(name)(_check_value(name, rule))
    return pydantic.create_model("Settings", __base__=JobSettings, __validators__=validators, **extra)


def training_argument_names() -> set[str]:
    """The names of the TrainingArguments fields that are settings: from transformers where the
    process has loaded it (the job), else from the list shipped with this package, which a test
    keeps equal to the installed transformers: `finetune submit` then needs no transformers and
    does not spend seconds importing it."""
    if "transformers" in sys.modules:
        return set(training_argument_fields())
    shipped = json.loads(TRAINING_ARGUMENT_NAMES_FILE.read_text())["names"]
    return {name for name in shipped if name not in REFUSED}


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
        if name in REFUSED:
            problems.append(refusal(name, PREFIX))
        elif name not in known:
            problems.append(f"{PREFIX}{name.upper()} is not a setting.{_did_you_mean(name, known)}")
    return problems


def _describe_error(err: ErrorDetails, source: Mapping[str, Any]) -> str:
    name = str(err["loc"][0]) if err["loc"] else "?"
    var = f"{PREFIX}{name.upper()}"
    if err["type"] == "missing":
        return f"{var} is required: {settings_class().model_fields[name].description}"
    got = "**********" if decision(name).secret else source.get(name, err.get("input"))
    message = err["msg"].removeprefix("Value error, ")
    message = message[0].lower() + message[1:] if message else message
    return f"{var} is invalid ({message}); got {got!r}."


def load_settings(
    environ: Mapping[str, str], runtime: Runtime, read_config: Callable[[str], bytes | None] | None = None
) -> JobSettings:
    """The validated settings, or SettingsError listing every problem found. `read_config` reads the
    FT_CONFIG file (an S3 URI or a local path; None: not there); without it only local files are read."""
    from_env = {key[len(PREFIX) :].lower(): value for key, value in environ.items() if key.startswith(PREFIX)}
    from_env = {k: v for k, v in from_env.items() if k not in NOT_SETTINGS}
    from_hyper = {
        k: v for k, v in runtime.hyperparameters.items() if not k.startswith(SAGEMAKER_HYPERPARAMETER_PREFIXES)
    }
    problems = check_setting_names(from_env) + [
        p.replace(PREFIX, "hyperparameter ", 1) for p in check_setting_names(from_hyper)
    ]
    known = setting_names()
    config_uri = str(from_env.get(files.CONFIG) or from_hyper.get(files.CONFIG) or "") or None
    from_file = _read_config_file(config_uri, read_config or _read_local, known, problems) if config_uri else {}
    merged: dict[str, Any] = dict(runtime.platform_defaults())
    merged.update({k: v for k, v in from_file.items() if k in known})
    merged.update({k: v for k, v in from_hyper.items() if k in known})
    merged.update({k: v for k, v in from_env.items() if k in known})
    merged = {
        k: v for k, v in merged.items() if not (isinstance(v, str) and v == "" and k not in JobSettings.model_fields)
    }
    settings = None
    try:
        settings = settings_class()(**merged)
    except pydantic.ValidationError as exc:
        only_in_file = set(from_file) - set(from_env) - set(from_hyper)
        for err in exc.errors():
            problem, name = _describe_error(err, merged), str(err["loc"][0]) if err["loc"] else ""
            if name in only_in_file:  # name the file, as a problem with a variable names the variable
                problem = problem.replace(f"{PREFIX}{name.upper()}", f"FT_CONFIG {config_uri}: {name}", 1)
            problems.append(problem)
    if settings is not None:
        problems += cross_checks(settings, runtime)
    if problems:
        raise SettingsError(problems)
    assert settings is not None  # a ValidationError always adds problems
    return settings


def _read_local(uri: str) -> bytes | None:
    if uri.startswith("s3://"):
        raise SettingsError([f"FT_CONFIG {uri}: this command reads local config files only."])
    path = Path(uri).expanduser()
    return path.read_bytes() if path.is_file() else None


def _read_config_file(
    uri: str, read: Callable[[str], bytes | None], known: set[str], problems: list[str]
) -> dict[str, Any]:
    """The settings in the FT_CONFIG file; its problems are added to `problems`."""
    try:
        data = read(uri)
    except UserError as exc:  # e.g. no access to the S3 object; the world's errors are raised
        problems.append(f"FT_CONFIG {uri}: {exc}")
        return {}
    if data is None:
        problems.append(f"FT_CONFIG {uri} does not exist: give the path or s3:// URI of a YAML or JSON file.")
        return {}
    values, found = config_file_values(uri, data, known)
    problems += found
    return values


def config_file_values(uri: str, data: bytes, known: set[str] | None = None) -> tuple[dict[str, Any], list[str]]:
    """The settings in an FT_CONFIG file's contents (config/files.py) and the problems with them:
    not YAML/JSON, not a mapping, unknown or refused names (each naming the file and the key)."""
    try:
        values = files.parse(uri, data)
    except SettingsError as exc:
        return {}, exc.problems
    refused = {name: f"{d.reason}. Fix: {d.fix}" for name, d in REFUSED.items()}
    return values, files.key_problems(uri, values, setting_names() if known is None else known, refused)


def cross_checks(settings: JobSettings, runtime: Runtime) -> list[str]:
    """Problems that involve more than one setting or the platform."""
    problems = []
    if settings.eval_data and settings.validation_split:
        problems.append("FT_VALIDATION_SPLIT and FT_EVAL_DATA are both set: give one of them.")
    for name in ("train_data", "eval_data"):
        value = getattr(settings, name) or ""
        if value.startswith("hf://") and not value.startswith("hf://datasets/"):
            problems.append(
                f"{PREFIX}{name.upper()}={value!r}: hf:// names a Hub data set, "
                "hf://datasets/org/name[@revision][/folder-or-glob]."
            )
    if runtime.platform == "batch" and not settings.output_uri.startswith("s3://"):
        problems.append(
            f"FT_OUTPUT_URI must be an s3:// URI on AWS Batch (got {settings.output_uri!r}): "
            "the container's disk is lost when the job ends."
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
    save, evaluate = ta.get("save_strategy", "steps"), ta.get("eval_strategy", "no")
    if ta.get("load_best_model_at_end") and save not in ("best", evaluate):
        problems.append(
            "FT_LOAD_BEST_MODEL_AT_END needs FT_SAVE_STRATEGY equal to FT_EVAL_STRATEGY (or FT_SAVE_STRATEGY=best); "
            f"got FT_SAVE_STRATEGY={save} and FT_EVAL_STRATEGY={evaluate}."
        )
    problems += [p for name in URI_SETTINGS if (p := s3_uri_problem(name, getattr(settings, name)))]
    problems += sensitive.reference_problems(settings.secrets)
    if settings.early_stopping_patience and not ta.get("load_best_model_at_end"):
        problems.append(
            "FT_EARLY_STOPPING_PATIENCE needs FT_LOAD_BEST_MODEL_AT_END=true "
            "(and FT_EVAL_STRATEGY with evaluation data)."
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


URI_SETTINGS = ("model", "train_data", "eval_data", "output_uri", "checkpoint_uri")
# The characters https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html allows
# (S3 itself refuses names shorter than 3; moto and the unit tests do not care).
BUCKET_NAME = re.compile(r"[a-z0-9](?:[a-z0-9.-]{0,61}[a-z0-9])?")


def s3_uri_problem(name: str, uri: str | None) -> str | None:
    """A problem with an s3:// URI setting's form: no bucket, or a name S3 does not allow."""
    if not uri or not uri.startswith("s3://"):
        return None
    bucket = uri[len("s3://") :].partition("/")[0]
    if not BUCKET_NAME.fullmatch(bucket):
        what = "has no bucket" if not bucket else f"has an invalid bucket name {bucket!r}"
        return (
            f"{PREFIX}{name.upper()}={uri!r} {what}: expected s3://bucket/prefix, the bucket name being up to 63 "
            "lower-case letters, digits, dots and hyphens."
        )
    return None


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


def cache_uri(settings: JobSettings, runtime: Runtime) -> str:
    """FT_CACHE_URI, or `cache/` under FT_OUTPUT_URI; on SageMaker under the checkpoint location,
    which SageMaker restores on a restart (its /opt/ml/model is packed into the model artifact)."""
    if settings.cache_uri:
        return settings.cache_uri
    return _under(checkpoint_uri(settings) if runtime.sagemaker is not None else settings.output_uri, "cache/")


# Seconds between the stop signal and SIGKILL: SageMaker (StopTrainingJob, spot) gives 120; ECS
# (AWS Batch) waits ECS_CONTAINER_STOP_TIMEOUT, 30 s unless the compute environment sets more.
STOP_GRACE_SECONDS = {"sagemaker": 120.0, "batch": 30.0}
DEFAULT_STOP_GRACE_SECONDS = 30.0


def stop_grace_seconds(settings: JobSettings, runtime: Runtime) -> float:
    """FT_STOP_GRACE_SECONDS, or the platform's time between a stop signal and the kill."""
    if settings.stop_grace_seconds is not None:
        return settings.stop_grace_seconds
    return STOP_GRACE_SECONDS.get(runtime.platform, DEFAULT_STOP_GRACE_SECONDS)


def tensorboard_uri(settings: JobSettings, runtime: Runtime) -> str:
    """Where TensorBoard event files go: SageMaker's TensorBoard output folder there, else
    `tensorboard/` under FT_OUTPUT_URI."""
    if runtime.sagemaker is not None:
        return str(runtime.sagemaker.tensorboard_dir)
    return _under(settings.output_uri, "tensorboard/")


def write_locations(settings: JobSettings, runtime: Runtime, report_to: Iterable[str]) -> dict[str, str]:
    """{label naming the setting: uri} of every location the job writes to, for the write check
    before any download: the output, the checkpoints, the cache of prepared data, TensorBoard files."""
    default = "" if runtime.sagemaker is not None else " (default: {} under FT_OUTPUT_URI)"
    locations = {"FT_OUTPUT_URI": settings.output_uri}
    locations["FT_CHECKPOINT_URI" + ("" if settings.checkpoint_uri else default.format("checkpoints/"))] = (
        checkpoint_uri(settings)
    )
    if settings.cache_prepared_data:
        locations["FT_CACHE_URI" + ("" if settings.cache_uri else default.format("cache/"))] = cache_uri(
            settings, runtime
        )
    if "tensorboard" in report_to:
        where = (
            "SageMaker's TensorBoard folder" if runtime.sagemaker is not None else "tensorboard/ under FT_OUTPUT_URI"
        )
        locations[f"The TensorBoard location ({where}, FT_REPORT_TO=tensorboard)"] = tensorboard_uri(settings, runtime)
    return locations


def _under(base: str, name: str) -> str:
    return (base if base.endswith("/") else base + "/") + name
