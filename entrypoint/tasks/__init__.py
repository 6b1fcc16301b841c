"""What each FT_TASK means: its columns, labels, model class, tokenization, data collator,
metrics and Trainer class. One module per task; `get` picks one."""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any

MODULES = {
    "sequence-classification": "classification",
    "causal-lm": "causal_lm",
    "masked-lm": "masked_lm",
    "seq2seq": "seq2seq",
}


@dataclasses.dataclass(frozen=True)
class Prepared:
    """Data sets ready for tokenization, and what the model needs to know about them."""

    train: Any
    eval: Any | None
    info: dict = dataclasses.field(default_factory=dict)  # e.g. {"id2label": {...}}


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    columns: Callable[[Any], dict[str, str | None]]  # settings -> {setting name: column} that must exist
    prepare: Callable[[Any, Any], Prepared]  # (data.Splits, settings) -> Prepared
    load_model: Callable[..., Any]  # (folder, uri, info, settings, seed) -> model
    tokenize: Callable[..., Any]  # (dataset, tokenizer, settings, info) -> dataset
    collator: Callable[..., Any]  # (tokenizer, model, settings) -> data collator
    metrics: Callable[..., Callable | None]  # (tokenizer, settings, info) -> compute_metrics or None
    trainer: Callable[..., tuple[type, dict]]  # (settings, info) -> (Trainer class, extra kwargs)
    seq2seq_arguments: bool = False  # Seq2SeqTrainingArguments (generation settings) instead of TrainingArguments
    metric_for_best_model: str = "loss"
    # TrainingArguments defaults of this task where they differ from finetune's (trainer_fields.DEFAULTS)
    argument_defaults: dict[str, Any] = dataclasses.field(default_factory=dict)
    # Evaluation batches this many times the training batch when FT_PER_DEVICE_EVAL_BATCH_SIZE is unset
    # (tasks whose metrics are per-example: a prediction does not depend on its batch).
    eval_batch_scale: int = 1


def get(name: str) -> Task:
    return importlib.import_module(f"{__name__}.{MODULES[name]}").TASK
