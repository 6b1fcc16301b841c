"""Training and evaluation data: csv, jsonl/json or parquet, one file or a folder/prefix of them,
from S3 or local disk, loaded with `datasets`; labels checked and mapped to ids."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import datasets

from . import storage
from .errors import UserError

log = logging.getLogger(__name__)

FORMATS = {".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


@dataclasses.dataclass(frozen=True)
class Splits:
    train: datasets.Dataset
    eval: datasets.Dataset | None
    id2label: dict[int, str]


def data_files(path: Path, setting: str) -> tuple[str, list[str]]:
    """The `datasets` builder name and the files for a file or a folder."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    usable = [p for p in files if p.suffix.lower() in FORMATS]
    if not usable:
        raise UserError(f"{setting}: no csv, jsonl, json or parquet file at {path}. Point {setting} at such a file or a folder of them.")
    kinds = {FORMATS[p.suffix.lower()] for p in usable}
    if len(kinds) > 1:
        raise UserError(f"{setting}: {path} mixes formats ({', '.join(sorted(kinds))}). Keep one format per data set.")
    return kinds.pop(), [str(p) for p in usable]


def load_table(uri: str, setting: str, work_dir: Path, concurrency: int) -> datasets.Dataset:
    """One data set from `uri` (downloaded first when it is on S3)."""
    local = storage.fetch(uri, work_dir / "data" / setting.lower(), concurrency)
    builder, files = data_files(local, setting)
    try:
        ds = datasets.load_dataset(builder, data_files=files, split="train", cache_dir=str(work_dir / "hf-datasets"))
    except Exception as exc:  # noqa: BLE001 - any parse failure is a problem with the user's file
        raise UserError(f"{setting}: cannot read {uri} as {builder}: {exc}") from exc
    if len(ds) == 0:
        raise UserError(f"{setting}: {uri} holds no rows.")
    log.info("loaded %s: %d rows from %d file(s), columns %s", setting, len(ds), len(files), ds.column_names)
    return ds


def require_columns(ds: datasets.Dataset, columns: dict[str, str | None], setting: str) -> None:
    """Each {setting name: column} must exist in `ds`."""
    for name, column in columns.items():
        if column is not None and column not in ds.column_names:
            raise UserError(
                f"{setting} has no column {column!r} (from {name}); its columns are: {', '.join(ds.column_names)}. "
                f"Set {name} to one of them."
            )


def label_mapping(train_labels: list, eval_labels: list, label_column: str) -> dict[int, str]:
    """id2label for the labels found: integer labels keep their values, strings are sorted."""
    missing = sum(1 for v in train_labels if v is None)
    if missing:
        raise UserError(f"FT_TRAIN_DATA: {missing} row(s) have no value in label column {label_column!r}. Fill or drop them.")
    values = set(train_labels)
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        if min(values) < 0:
            raise UserError(f"FT_TRAIN_DATA: integer labels must be 0 or more; found {min(values)} in {label_column!r}.")
        unseen = {v for v in eval_labels if not isinstance(v, int) or v < 0 or v > max(values)}
        if unseen:
            raise UserError(f"FT_EVAL_DATA: labels {sorted(map(str, unseen))[:5]} do not occur in the training data.")
        return {i: str(i) for i in range(max(values) + 1)}
    names = sorted(str(v) for v in values)
    unseen = {str(v) for v in eval_labels} - set(names)
    if unseen:
        raise UserError(f"FT_EVAL_DATA: labels {sorted(unseen)[:5]} do not occur in the training data.")
    return dict(enumerate(names))


def encode_labels(ds: datasets.Dataset, column: str, id2label: dict[int, str]) -> datasets.Dataset:
    """`ds` with a `labels` column of ids."""
    label2id = {name: i for i, name in id2label.items()}
    numeric = all(name == str(i) for i, name in id2label.items())

    def to_ids(batch):
        return {"labels": [int(v) if numeric and not isinstance(v, str) else label2id[str(v)] for v in batch[column]]}

    return ds.map(to_ids, batched=True, desc="labels")


def load_splits(settings, work_dir: Path) -> Splits:
    """The train and eval data sets with their label mapping (classification)."""
    conc = settings.transfer_concurrency
    train = load_table(settings.train_data, "FT_TRAIN_DATA", work_dir, conc)
    columns = {"FT_TEXT_COLUMN": settings.text_column, "FT_TEXT_PAIR_COLUMN": settings.text_pair_column, "FT_LABEL_COLUMN": settings.label_column}
    require_columns(train, columns, "FT_TRAIN_DATA")
    evaluation = None
    if settings.eval_data:
        evaluation = load_table(settings.eval_data, "FT_EVAL_DATA", work_dir, conc)
        require_columns(evaluation, columns, "FT_EVAL_DATA")
    eval_labels = evaluation[settings.label_column] if evaluation is not None else []
    id2label = label_mapping(train[settings.label_column], eval_labels, settings.label_column)
    if settings.validation_split:
        # After the mapping, so a label that lands only in the held-out part keeps its id.
        parts = train.train_test_split(test_size=settings.validation_split, seed=settings.seed if settings.seed is not None else 42)
        train, evaluation = parts["train"], parts["test"]
    train = encode_labels(train, settings.label_column, id2label)
    if evaluation is not None:
        evaluation = encode_labels(evaluation, settings.label_column, id2label)
    return Splits(train=train, eval=evaluation, id2label=id2label)
