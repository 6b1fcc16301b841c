"""What finetune does with each field of the Trainer's arguments, decided once, field by field.

Every field of `transformers.Seq2SeqTrainingArguments` is a setting under its own name
(FT_<FIELD>), so a user can turn on things that undo the job's own mechanisms (its SIGTERM
handling, its exact resume, its checkpoint location). Each field is therefore:

- **allowed**: passed to the Trainer as given; its values may be checked with the settings,
  before any download (`gt`/`ge`/`lt`/`le`, `choices`, `value`);
- **refused**: not a setting; naming it is a settings error that says why and what to do instead;
- **adjusted**: a setting, but finetune changes what the Trainer gets (a different default, a
  value it forces, or a value kept out of the pickled arguments); `reason` says how.

A test walks the installed transformers' fields and fails on any this table does not decide, so an
upgrade cannot add a field silently. docs/settings.md lists the refused and adjusted ones
(`finetune settings --trainer-fields`, kept equal by a test). This module imports nothing heavy:
the light install (`finetune submit`) checks names with it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

Kind = Literal["allowed", "refused", "adjusted"]
# What a text value must be: JSON (an object), JSON or a path to a JSON file on this machine,
# JSON, such a path or an s3:// URI (downloaded first), or a path on this machine.
ValueForm = Literal["json", "json-or-path", "json-path-or-s3", "path"]


@dataclasses.dataclass(frozen=True)
class Decision:
    kind: Kind
    reason: str = ""  # why; for `adjusted`, what finetune does; for `allowed`, what is checked
    fix: str = ""  # `refused`: what to do instead
    default: Any = None  # `adjusted`: finetune's own default, where it differs from the Trainer's
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    unset: Any = None  # the Trainer's "not set" value, accepted besides the bounds (max_steps=-1)
    choices: tuple[str, ...] = ()  # allowed text values (enums and metadata choices come from transformers)
    value: ValueForm | None = None
    seq2seq_only: bool = False  # Seq2SeqTrainingArguments' own fields: FT_TASK=seq2seq only
    secret: bool = False  # never logged, never pickled into training_args.bin

    @property
    def bounds(self) -> dict[str, float]:
        return {k: v for k in ("gt", "ge", "lt", "le") if (v := getattr(self, k)) is not None}


def allowed(reason: str = "", **checks: Any) -> Decision:
    return Decision("allowed", reason, **checks)


def refused(reason: str, fix: str) -> Decision:
    return Decision("refused", reason, fix)


def adjusted(reason: str, **details: Any) -> Decision:
    return Decision("adjusted", reason, **details)


POSITIVE: dict[str, Any] = {"gt": 0}
NON_NEGATIVE: dict[str, Any] = {"ge": 0}
FRACTION: dict[str, Any] = {"ge": 0, "lt": 1}
SEED: dict[str, Any] = {"ge": 0, "le": 2**32 - 1}  # numpy's seed range
LEAVE_UNSET = "leave it unset"
PUSH_ONLY = "only used to push to the Hugging Face Hub, which finetune refuses (see FT_PUSH_TO_HUB)"
NO_PUSH_FIX = "remove it; push the published model from FT_OUTPUT_URI to the Hub after the job (`hf upload`)"
# The Trainer's reporting integrations (transformers.integrations.INTEGRATION_TO_CALLBACK), with
# its two words; a test keeps the list equal to the installed transformers'.
REPORT_TO = (
    "all",
    "none",
    "azure_ml",
    "clearml",
    "codecarbon",
    "comet_ml",
    "dagshub",
    "dvclive",
    "flyte",
    "kubeflow",
    "mlflow",
    "neptune",
    "swanlab",
    "tensorboard",
    "trackio",
    "wandb",
)

TRAINER_FIELDS: dict[str, Decision] = {
    # -- where things go: the job's own --------------------------------------------------------
    "output_dir": refused(
        "finetune sets it: the Trainer's checkpoints go to scratch under FT_WORK_DIR, then to FT_CHECKPOINT_URI",
        "use FT_OUTPUT_URI for the model and FT_CHECKPOINT_URI for checkpoints",
    ),
    "resume_from_checkpoint": refused(
        "resuming is automatic: the newest complete checkpoint under FT_CHECKPOINT_URI is used", "remove it"
    ),
    "local_rank": refused("set by the launcher", "remove it; FT_NUM_PROCESSES sets the processes per machine"),
    "do_train": refused("has no effect on the Trainer", "remove it"),
    "do_eval": refused("has no effect on the Trainer", "remove it; set FT_EVAL_STRATEGY"),
    "do_predict": refused("has no effect on the Trainer", "remove it"),
    # -- length and batch ----------------------------------------------------------------------
    "per_device_train_batch_size": allowed("a positive integer", **POSITIVE),
    "per_device_eval_batch_size": adjusted(
        "default twice FT_PER_DEVICE_TRAIN_BATCH_SIZE for sequence-classification (evaluation keeps no gradients, "
        "and a prediction does not depend on its batch); the Trainer's 8 for the other tasks",
        **POSITIVE,
    ),
    "num_train_epochs": allowed("positive", **POSITIVE),
    "max_steps": allowed("positive, or -1 (the Trainer's 'unset': FT_NUM_TRAIN_EPOCHS decides)", gt=0, unset=-1),
    "gradient_accumulation_steps": allowed("a positive integer", **POSITIVE),
    "auto_find_batch_size": allowed(
        "on CUDA out-of-memory the Trainer halves the batch and restarts; a checkpoint keeps the size found"
    ),
    # -- optimizer and schedule ----------------------------------------------------------------
    "learning_rate": allowed("0 or more", **NON_NEGATIVE),
    "lr_scheduler_type": allowed("one of the Trainer's SchedulerType values"),
    "lr_scheduler_kwargs": allowed("a JSON object", value="json"),
    "warmup_steps": allowed("0 or more (below 1: a fraction of the steps)", **NON_NEGATIVE),
    "optim": allowed("one of the Trainer's OptimizerNames; 8-bit and paged ones need CUDA and bitsandbytes"),
    "optim_args": allowed(),
    "optim_target_modules": allowed(),
    "weight_decay": allowed("0 or more", **NON_NEGATIVE),
    "adam_beta1": allowed("in [0, 1)", **FRACTION),
    "adam_beta2": allowed("in [0, 1)", **FRACTION),
    "adam_epsilon": allowed("0 or more", **NON_NEGATIVE),
    "max_grad_norm": allowed("0 or more (0: no clipping)", **NON_NEGATIVE),
    "label_smoothing_factor": allowed("in [0, 1)", **FRACTION),
    "average_tokens_across_devices": allowed(),
    "neftune_noise_alpha": allowed("positive", **POSITIVE),
    # -- precision and speed -------------------------------------------------------------------
    "bf16": adjusted(
        "default true on CUDA GPUs with bf16 (Ampere or newer; FT_GPU_DEFAULTS), else fp32; false turns it off"
    ),
    "fp16": adjusted(
        "default false: fp16 (a loss scaler, a risk of divergence) only when set; FT_FP16=true needs CUDA (checked)"
    ),
    "bf16_full_eval": allowed(),
    "fp16_full_eval": allowed(),
    "tf32": adjusted(
        "default true on Ampere or newer GPUs (FT_GPU_DEFAULTS); true needs one (the Trainer refuses it otherwise, "
        "before any download)"
    ),
    "activation_checkpointing": allowed(),
    "activation_checkpointing_kwargs": allowed("a JSON object", value="json"),
    "gradient_checkpointing": allowed("the Trainer's deprecated alias of activation_checkpointing"),
    "gradient_checkpointing_kwargs": allowed("a JSON object", value="json"),
    "torch_compile": allowed(
        "compiles the model at the first step; checkpoints hold the plain weights, so resuming is unaffected"
    ),
    "torch_compile_backend": allowed(),
    "torch_compile_mode": allowed(),
    "use_liger_kernel": allowed("needs the liger-kernel package (checked)"),
    "liger_kernel_config": adjusted("JSON text, parsed into the dict the Trainer expects", value="json"),
    "use_cache": allowed(),
    "torch_empty_cache_steps": allowed("a positive integer", **POSITIVE),
    "use_cpu": allowed(),
    # -- logging and reporting -----------------------------------------------------------------
    "logging_strategy": allowed("each Trainer log entry becomes a [metrics] line; `no` leaves the final ones only"),
    "logging_steps": adjusted("default 50 (the Trainer's: 500); positive", default=50, **POSITIVE),
    "logging_first_step": allowed(),
    "log_on_each_node": allowed(),
    "logging_nan_inf_filter": allowed(),
    "include_num_input_tokens_seen": allowed(
        "all, non_padding, no, or a boolean", choices=("all", "non_padding", "no")
    ),
    "log_level": adjusted(
        "FT_LOG_LEVEL is finetune's own log level (DEBUG, INFO, WARNING, ERROR); the Trainer's keeps its default"
    ),
    "log_level_replica": allowed(),
    "disable_tqdm": adjusted(
        "default true: progress bars flood CloudWatch; the [metrics] lines report progress", default=True
    ),
    "report_to": allowed(
        "integrations the Trainer knows, whose package is installed here (checked); TensorBoard files are synced to "
        "FT_OUTPUT_URI",
        choices=REPORT_TO,
    ),
    "run_name": allowed(),
    "project": allowed(),
    "trackio_space_id": allowed("FT_REPORT_TO=trackio only (needs the trackio package)"),
    "trackio_bucket_id": allowed("FT_REPORT_TO=trackio only"),
    "trackio_static_space_id": allowed("FT_REPORT_TO=trackio only"),
    "skip_memory_metrics": allowed(),
    "debug": allowed(),
    # -- evaluation ----------------------------------------------------------------------------
    "eval_strategy": allowed("needs FT_EVAL_DATA or FT_VALIDATION_SPLIT (checked)"),
    "eval_steps": allowed("positive", **POSITIVE),
    "eval_delay": allowed("0 or more", **NON_NEGATIVE),
    "eval_on_start": allowed(),
    "eval_accumulation_steps": allowed("a positive integer", **POSITIVE),
    "eval_use_gather_object": allowed(),
    "prediction_loss_only": allowed("evaluation then reports the loss only: FT_METRIC_FOR_BEST_MODEL must be loss"),
    "eval_do_concat_batches": refused(
        "finetune's metrics (accuracy, F1, BLEU) need the evaluation batches concatenated; given per-batch lists "
        "they fail at the first evaluation, or count wrong",
        LEAVE_UNSET,
    ),
    "include_for_metrics": refused(
        "finetune's metric functions take predictions and labels; with inputs or losses included they fail at "
        "the first evaluation",
        LEAVE_UNSET,
    ),
    "batch_eval_metrics": refused(
        "finetune's metric functions compute over the whole evaluation set, not batch by batch", LEAVE_UNSET
    ),
    "load_best_model_at_end": allowed(
        "needs evaluation and FT_SAVE_STRATEGY equal to FT_EVAL_STRATEGY or `best` (checked); the best checkpoint "
        "is also kept at FT_CHECKPOINT_URI"
    ),
    "metric_for_best_model": adjusted("default: the task's metric (e.g. accuracy) instead of the loss"),
    "greater_is_better": allowed(),
    # -- checkpoints and resume ----------------------------------------------------------------
    "save_strategy": allowed(
        "`no` turns periodic checkpoints off, yet a stop request (SIGTERM, spot notice) still saves one and exits "
        "143; with `best`, a stop that lands on an evaluation step which is not a new best saves nothing (the "
        "steps since the last checkpoint are redone)"
    ),
    "save_steps": allowed("positive", **POSITIVE),
    "save_total_limit": adjusted(
        "default 2: local scratch only; retention at FT_CHECKPOINT_URI is FT_CHECKPOINT_KEEP_LAST",
        default=2,
        **POSITIVE,
    ),
    "save_on_each_node": allowed("each machine keeps its own scratch copies; world rank 0 alone uploads"),
    "save_only_model": refused(
        "checkpoints without optimizer, scheduler and RNG state cannot resume exactly: a resumed job would silently "
        "end with different weights than an uninterrupted one",
        "remove it; the published model holds the weights alone anyway",
    ),
    "enable_jit_checkpoint": refused(
        "the Trainer's SIGTERM handler would replace finetune's: a SIGTERM would end the job with exit 0 and "
        "publish a half-trained model. finetune already saves a checkpoint at the next step boundary on SIGTERM "
        "or a spot notice, makes it durable, and exits 143",
        "remove it; nothing else is needed",
    ),
    "ignore_data_skip": refused(
        "a resumed job would train on the data from the start again instead of where the interrupted attempt "
        "stopped: its result would differ from an uninterrupted run's",
        "remove it",
    ),
    "restore_callback_states_from_checkpoint": adjusted(
        "forced true with FT_EARLY_STOPPING_PATIENCE, so a resumed job keeps its patience count"
    ),
    "full_determinism": allowed(),
    "seed": allowed("an integer in [0, 2^32)", **SEED),
    "data_seed": allowed("an integer in [0, 2^32)", **SEED),
    # -- Hugging Face Hub ----------------------------------------------------------------------
    "push_to_hub": refused(
        "the Trainer would push its scratch checkpoint folder from inside the job, needing the Hub at run time; "
        "finetune publishes the model to FT_OUTPUT_URI",
        NO_PUSH_FIX,
    ),
    "hub_token": adjusted(
        "a secret: kept out of the TrainingArguments (the Trainer pickles them into training_args.bin in every "
        "checkpoint and the published model), out of logs and reports; the Trainer needs it only to push to the Hub, "
        "which finetune refuses (Hub downloads use HF_TOKEN)",
        secret=True,
    ),
    "hub_model_id": refused(PUSH_ONLY, NO_PUSH_FIX),
    "hub_strategy": refused(PUSH_ONLY, NO_PUSH_FIX),
    "hub_always_push": refused(PUSH_ONLY, NO_PUSH_FIX),
    "hub_revision": refused(PUSH_ONLY, NO_PUSH_FIX),
    "hub_private_repo": allowed("also decides whether a Trackio Space is private"),
    # -- data loading --------------------------------------------------------------------------
    "dataloader_drop_last": allowed(),
    "dataloader_num_workers": adjusted(
        "default sized to the job's CPU budget: 0 on CPU, on CUDA up to 4 per process (docs/operations.md); 0 or more",
        **NON_NEGATIVE,
    ),
    "dataloader_pin_memory": adjusted("default: on CUDA only (pinning on CPU only warns)"),
    "dataloader_persistent_workers": adjusted("default true on CUDA with data-loader workers (FT_GPU_DEFAULTS)"),
    "dataloader_prefetch_factor": allowed("positive, with FT_DATALOADER_NUM_WORKERS", **POSITIVE),
    "dataloader_multiprocessing_context": allowed(),
    "dataloader_in_order": allowed(),
    "remove_unused_columns": allowed(),
    "label_names": allowed(),
    "train_sampling_strategy": adjusted(
        "default group_by_length for sequence-classification, seq2seq and masked-lm (batches of similar length: "
        "less padding), drawn from (seed, epoch) so a resumed job sees the same batches; `random` turns it off"
    ),
    "length_column_name": allowed(),
    # -- distributed ---------------------------------------------------------------------------
    "accelerator_config": allowed("JSON, or a JSON file that exists on this machine (checked)", value="json-or-path"),
    "parallelism_config": refused(
        "takes an accelerate ParallelismConfig object, which a setting cannot give",
        "use FT_FSDP with FT_FSDP_CONFIG, or FT_DEEPSPEED",
    ),
    "ddp_find_unused_parameters": allowed(),
    "ddp_bucket_cap_mb": allowed("positive", **POSITIVE),
    "ddp_broadcast_buffers": allowed(),
    "ddp_static_graph": allowed(),
    "ddp_backend": allowed("nccl needs CUDA (checked)"),
    "ddp_timeout": allowed("positive seconds", **POSITIVE),
    "fsdp": allowed(),
    "fsdp_config": allowed("JSON, or a JSON file that exists on this machine (checked)", value="json-or-path"),
    "deepspeed": adjusted(
        "an s3:// URI is downloaded first; JSON or a file on this machine is passed on (checked); needs the "
        "deepspeed package (checked)",
        value="json-path-or-s3",
    ),
    # -- seq2seq (generation during evaluation) ------------------------------------------------
    "predict_with_generate": allowed("FT_TASK=seq2seq only", seq2seq_only=True),
    "generation_max_length": allowed("FT_TASK=seq2seq only; positive", seq2seq_only=True, **POSITIVE),
    "generation_num_beams": allowed("FT_TASK=seq2seq only; positive", seq2seq_only=True, **POSITIVE),
    "generation_config": allowed(
        "FT_TASK=seq2seq only; a generation_config.json or a folder holding one, on this machine (checked): a Hub "
        "id would be fetched only when the Trainer starts",
        seq2seq_only=True,
        value="path",
    ),
    "sortish_sampler": refused(
        "has no effect in transformers 5 (the Seq2SeqTrainer ignores it)",
        "remove it; FT_TRAIN_SAMPLING_STRATEGY=group_by_length groups examples of similar length",
    ),
}

REFUSED: dict[str, Decision] = {name: d for name, d in TRAINER_FIELDS.items() if d.kind == "refused"}
SEQ2SEQ_ONLY: frozenset[str] = frozenset(name for name, d in TRAINER_FIELDS.items() if d.seq2seq_only)
# finetune's defaults where they differ from the Trainer's.
DEFAULTS: dict[str, Any] = {name: d.default for name, d in TRAINER_FIELDS.items() if d.default is not None}


def refusal(name: str, prefix: str = "FT_") -> str:
    """The settings problem for naming a refused field."""
    decision = REFUSED[name]
    return f"{prefix}{name.upper()} cannot be set: {decision.reason}. Fix: {decision.fix}."


def markdown_table() -> str:
    """The refused and adjusted fields as docs/settings.md lists them (`finetune settings --trainer-fields`)."""
    rows = ["| setting | finetune | why, and what to do |", "|---|---|---|"]
    for name, d in sorted(TRAINER_FIELDS.items(), key=lambda item: (item[1].kind != "refused", item[0])):
        if d.kind == "refused":
            rows.append(f"| `FT_{name.upper()}` | refused | {d.reason}. Fix: {d.fix}. |")
        elif d.kind == "adjusted":
            rows.append(f"| `FT_{name.upper()}` | adjusted | {d.reason}. |")
    return "\n".join(rows)
