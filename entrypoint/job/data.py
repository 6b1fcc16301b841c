"""Training and evaluation data: csv, jsonl/json or parquet, one file or a folder/prefix of them,
from S3 or local disk, loaded with `datasets`, with the columns the task needs checked."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path

import datasets

from entrypoint.errors import UserError
from entrypoint.io import storage

log = logging.getLogger(__name__)

FORMATS = {".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
# What a file that cannot be read should be instead, by builder.
VALID = {
    "csv": (
        "Save it as UTF-8 csv: one header row, then the same number of fields in every row (quote fields that hold "
        "commas or line breaks)."
    ),
    "json": "Save it as UTF-8 JSON lines: one valid json object per line (or one JSON list of objects).",
    "parquet": "Write it again as valid parquet (e.g. pandas.DataFrame.to_parquet); this file is damaged.",
}
# A csv header longer than this, without a line break, is not a header: the file lost its line breaks.
CSV_HEADER_LIMIT_BYTES = 1024 * 1024
# Settings naming a column of text (or numbers, read as text); FT_MESSAGES_COLUMN holds lists.
SCALAR_COLUMNS = (
    "FT_TEXT_COLUMN",
    "FT_TEXT_PAIR_COLUMN",
    "FT_LABEL_COLUMN",
    "FT_SOURCE_COLUMN",
    "FT_TARGET_COLUMN",
    "FT_PROMPT_COLUMN",
    "FT_RESPONSE_COLUMN",
)


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
            f"{setting}: no csv, jsonl, json or parquet file at {path}. "
            f"Point {setting} at such a file or a folder of them."
        )
    kinds = {FORMATS[p.suffix.lower()] for p in usable}
    if len(kinds) > 1:
        raise UserError(f"{setting}: {path} mixes formats ({', '.join(sorted(kinds))}). Keep one format per data set.")
    return kinds.pop(), [str(p) for p in usable]


def load_table(uri: str, setting: str, work_dir: Path, concurrency: int) -> datasets.Dataset:
    """One data set from `uri` (downloaded first when it is on S3)."""
    local = storage.fetch(uri, work_dir / "data" / setting.lower(), concurrency, label=setting)
    builder, files = data_files(local, setting)
    check_files(builder, files, setting)
    try:
        with quiet_builders():
            ds = datasets.load_dataset(
                builder, data_files=files, split="train", cache_dir=str(work_dir / "hf-datasets")
            )
    except Exception as exc:  # pandas', pyarrow's and datasets' own errors: the file is not what it says
        if "corresponds to no data" in str(exc):  # datasets' words for a file of a header alone
            raise UserError(f"{setting}: {uri} holds no rows. Point {setting} at data with rows.") from exc
        raise UserError(f"{setting}: cannot read {uri} as {builder} ({root_cause(exc)}). {VALID[builder]}") from exc
    if len(ds) == 0:
        raise UserError(f"{setting}: {uri} holds no rows. Point {setting} at data with rows.")
    log.info("loaded %s: %d rows from %d file(s), columns %s", setting, len(ds), len(files), ds.column_names)
    return ds


def check_files(builder: str, files: list[str], setting: str) -> None:
    """What a glance at the files tells before parsing them: an empty file, a csv without line breaks."""
    for name in files:
        path = Path(name)
        size = path.stat().st_size
        if size == 0:
            raise UserError(f"{setting}: {path.name} is empty (0 bytes). Point {setting} at the data itself.")
        if builder == "csv" and size > CSV_HEADER_LIMIT_BYTES:
            with path.open("rb") as handle:
                head = handle.read(CSV_HEADER_LIMIT_BYTES)
                if b"\n" not in head and b"\r" not in head:
                    raise UserError(
                        f"{setting}: {path.name} has no line break in its first {CSV_HEADER_LIMIT_BYTES // 2**20} MB: "
                        f"not csv rows. {VALID['csv']}"
                    )


@contextlib.contextmanager
def quiet_builders() -> Iterator[None]:
    """datasets' builders log a file they cannot read as an error of their own before raising; the
    job's one message (with the same cause) says it, with the fix."""
    logger = logging.getLogger("datasets")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def root_cause(exc: BaseException) -> str:
    """The innermost error's message (datasets wraps the parser's in its own)."""
    while (inner := exc.__cause__ or exc.__context__) is not None:
        exc = inner
    return f"{type(exc).__name__}: {str(exc).strip()[:500]}"


def require_columns(ds: datasets.Dataset, columns: dict[str, str | None], setting: str) -> None:
    """Each {setting name: column} must exist in `ds`; text and label columns hold single values."""
    for name, column in columns.items():
        if column is not None and column not in ds.column_names:
            raise UserError(
                f"{setting} has no column {column!r} (from {name}); its columns are: {', '.join(ds.column_names)}. "
                f"Set {name} to one of them."
            )
        feature = ds.features.get(column) if column is not None else None
        if (
            name in SCALAR_COLUMNS
            and feature is not None
            and not isinstance(feature, (datasets.Value, datasets.ClassLabel))
        ):
            what = "objects" if isinstance(feature, dict) else "lists"
            raise UserError(
                f"{setting}: column {column!r} ({name}) holds {what}, not text. Point {name} at a column of text, "
                "or turn each value into one text."
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
