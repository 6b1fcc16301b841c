"""sequence-classification: text (or text pairs) → a label; accuracy and macro-F1; optional
class-weighted loss for imbalanced data (FT_CLASS_WEIGHTS)."""

from __future__ import annotations

import logging

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding, set_seed

from entrypoint.errors import UserError
from entrypoint.job import modeling, preprocess

from . import Prepared, Task, lengths

log = logging.getLogger(__name__)


def columns(settings) -> dict[str, str | None]:
    return {
        "FT_TEXT_COLUMN": settings.text_column,
        "FT_TEXT_PAIR_COLUMN": settings.text_pair_column,
        "FT_LABEL_COLUMN": settings.label_column,
    }


def label_mapping(train_labels: list, eval_labels: list, label_column: str) -> dict[int, str]:
    """id2label for the labels found: integer labels keep their values, strings are sorted."""
    missing = sum(
        1 for v in train_labels if v is None or v != v or (isinstance(v, str) and not v.strip())
    )  # v != v: NaN
    if missing:
        raise UserError(
            f"FT_TRAIN_DATA: {missing} row(s) have no value in label column {label_column!r}. Fill or drop them."
        )
    values = set(train_labels)
    if len(values) < 2:
        raise UserError(
            f"FT_TRAIN_DATA: every row has the same label ({next(iter(values), None)!r} in column {label_column!r}); "
            "a classifier needs at least two labels. Check FT_LABEL_COLUMN, or add rows of the other labels."
        )
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        if min(values) < 0:
            raise UserError(
                f"FT_TRAIN_DATA: integer labels must be 0 or more; found {min(values)} in {label_column!r}."
            )
        unseen = {v for v in eval_labels if not isinstance(v, int) or v < 0 or v > max(values)}
        if unseen:
            raise UserError(f"FT_EVAL_DATA: labels {sorted(map(str, unseen))[:5]} do not occur in the training data.")
        return {i: str(i) for i in range(max(values) + 1)}
    names = sorted(str(v) for v in values)
    unseen = {str(v) for v in eval_labels} - set(names)
    if unseen:
        raise UserError(f"FT_EVAL_DATA: labels {sorted(unseen)[:5]} do not occur in the training data.")
    return dict(enumerate(names))


def encode_labels(ds, column: str, id2label: dict[int, str]):
    """`ds` with a `labels` column of ids."""
    label2id = {name: i for i, name in id2label.items()}
    numeric = all(name == str(i) for i, name in id2label.items())

    def to_ids(batch):
        return {"labels": [int(v) if numeric and not isinstance(v, str) else label2id[str(v)] for v in batch[column]]}

    return ds.map(to_ids, batched=True, desc="labels")


def class_weights(setting: str | None, labels: list[int], num_labels: int) -> list[float] | None:
    """FT_CLASS_WEIGHTS: 'auto' (inverse label frequency, mean 1) or one weight per label."""
    if not setting:
        return None
    if setting.strip().lower() == "auto":
        counts = np.bincount(np.asarray(labels), minlength=num_labels).astype(float)
        weights = np.where(counts > 0, counts.sum() / (num_labels * np.maximum(counts, 1)), 0.0)
        return [float(w) for w in weights]
    try:
        weights = [float(x) for x in setting.split(",")]
    except ValueError:
        raise UserError(
            f"FT_CLASS_WEIGHTS must be 'auto' or {num_labels} comma-separated numbers; got {setting!r}."
        ) from None
    if len(weights) != num_labels or any(w < 0 for w in weights):
        raise UserError(
            f"FT_CLASS_WEIGHTS must be 'auto' or {num_labels} non-negative numbers (one per label); got {setting!r}."
        )
    return weights


def prepare(splits, settings) -> Prepared:
    column = settings.label_column
    train_labels = list(splits.train[column])
    eval_labels = list(splits.eval[column]) if splits.eval is not None else []
    # A held-out split comes from the same data: its labels count as seen.
    id2label = label_mapping(train_labels + eval_labels if splits.held_out else train_labels, eval_labels, column)
    train = encode_labels(splits.train, column, id2label)
    evaluation = encode_labels(splits.eval, column, id2label) if splits.eval is not None else None
    weights = class_weights(settings.class_weights, list(train["labels"]), len(id2label))
    return Prepared(train, evaluation, {"id2label": id2label, "class_weights": weights})


def load_model(folder, uri: str, info: dict, settings, seed: int):
    """A classifier with a head for the labels found (new head if sizes differ), seeded so two runs
    of the same job start from equal weights."""
    id2label = info["id2label"]
    set_seed(seed)
    try:
        return AutoModelForSequenceClassification.from_pretrained(
            str(folder),
            num_labels=len(id2label),
            id2label=id2label,
            label2id={name: i for i, name in id2label.items()},
            ignore_mismatched_sizes=True,
            **modeling.model_kwargs(settings),
        )
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"FT_MODEL: cannot load {uri} as a sequence-classification model: {exc}") from exc


def tokenize(ds, tokenizer, settings, info):
    length = preprocess.max_length(tokenizer, settings.max_length)
    text, pair = settings.text_column, settings.text_pair_column

    def encode(batch):
        first = [str(t) if t is not None else "" for t in batch[text]]
        second = [str(t) if t is not None else "" for t in batch[pair]] if pair else None
        return tokenizer(first, second, truncation=True, max_length=length)

    return ds.map(
        encode,
        batched=True,
        remove_columns=[c for c in ds.column_names if c != "labels"],
        desc="tokenize",
        **preprocess.map_options(ds, settings),
    )


def collator(tokenizer, model, settings):
    return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=lengths.pad_multiple(torch.cuda.is_available()))


def compute_metrics(eval_pred) -> dict[str, float]:
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


class ClassificationTrainer(lengths.LengthSampling):
    """The Trainer with training batches of similar length and evaluation sorted by length: a
    prediction does not depend on the batch it is in, so accuracy and F1 do not change."""


class WeightedLossTrainer(ClassificationTrainer):
    """Cross-entropy with per-class weights (imbalanced data)."""

    def __init__(self, *args, class_weights: list[float], **kwargs):
        super().__init__(*args, **kwargs)
        self.class_weights = torch.tensor(class_weights, dtype=torch.float32)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        logits = outputs.logits
        loss = torch.nn.functional.cross_entropy(logits.float(), labels, weight=self.class_weights.to(logits.device))
        return (loss, outputs) if return_outputs else loss


def trainer(settings, info) -> tuple[type, dict]:
    extra = {"eval_sort_by_length": settings.eval_sort_by_length}
    if settings.eval_sort_by_length:
        log.info(lengths.SORTED_MESSAGE)
    if info.get("class_weights"):
        return WeightedLossTrainer, dict(extra, class_weights=info["class_weights"])
    return ClassificationTrainer, extra


TASK = Task(
    name="sequence-classification",
    columns=columns,
    prepare=prepare,
    load_model=load_model,
    tokenize=tokenize,
    collator=collator,
    metrics=lambda tokenizer, settings, info: compute_metrics,
    trainer=trainer,
    eval_batch_scale=2,
    metric_for_best_model="accuracy",
    argument_defaults={"train_sampling_strategy": "group_by_length"},
)
