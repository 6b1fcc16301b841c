"""Training and evaluation data: csv, jsonl/json or parquet, one file or a folder/prefix of them,
from S3 or local disk, loaded with `datasets`, with the columns the task needs checked."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import datasets

from entrypoint.errors import UserError
from entrypoint.io import storage

log = logging.getLogger(__name__)

FORMATS = {".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


@dataclasses.dataclass(frozen=True)
class Splits:
    train: datasets.Dataset
    eval: datasets.Dataset | None
    held_out: bool  # eval was split off the training data (FT_VALIDATION_SPLIT)


def data_files(path: Path, setting: str) -> tuple[str, list[str]]:
    """The `datasets` builder name and the files for a file or a folder."""
    files = (
        [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    )
    usable = [p for p in files if p.suffix.lower() in FORMATS]
    if not usable:
        raise UserError(
            f"{setting}: no csv, jsonl, json or parquet file at {path}. Point {setting} at such a file or a folder of them."
        )
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
    except Exception as exc:
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


def load_splits(settings, work_dir: Path, columns: dict[str, str | None]) -> Splits:
    """The train and eval data sets, with the task's `columns` checked in both."""
    conc = settings.transfer_concurrency
    train = load_table(settings.train_data, "FT_TRAIN_DATA", work_dir, conc)
    require_columns(train, columns, "FT_TRAIN_DATA")
    if settings.eval_data:
        evaluation = load_table(settings.eval_data, "FT_EVAL_DATA", work_dir, conc)
        require_columns(evaluation, columns, "FT_EVAL_DATA")
        return Splits(train, evaluation, held_out=False)
    if settings.validation_split:
        parts = train.train_test_split(
            test_size=settings.validation_split, seed=settings.seed if settings.seed is not None else 42
        )
        return Splits(parts["train"], parts["test"], held_out=True)
    return Splits(train, None, held_out=False)
