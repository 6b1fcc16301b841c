"""Prepared data kept at FT_CACHE_URI: the tokenized (and, for causal-lm, packed) train and eval
data sets and the task's info (the label mapping, class weights), under a key derived from
everything that determines them. A restart, a later job with the same data and model, and every
`finetune tune` trial load them instead of downloading and tokenizing the data again.

    prepared/{key}/train/...                 Dataset.save_to_disk
    prepared/{key}/eval/...                  (with evaluation data)
    prepared/{key}/info.json                 the task's info
    prepared/{key}/finetune-manifest.json    size + sha256 of each file and what the key covers, written last

The key (`cache_key` of `key_inputs`) covers the content of the data files (S3 ETags, sha256 of
local files, a Hub data set's commit), the tokenizer files (sha256), the task, every setting that
changes preprocessing, and the code that does the work: the versions of transformers, tokenizers,
datasets and pyarrow, and the source of this package's preprocessing modules. Any change gives a
new key; a stale hit would need two different inputs with one key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import logging
import re
import shutil
import time
from pathlib import Path

import datasets

from entrypoint import tasks
from entrypoint.config.settings import JobSettings
from entrypoint.durability import stored
from entrypoint.durability.manifests import sha256
from entrypoint.io import storage
from entrypoint.job import data, preprocess, sources

log = logging.getLogger(__name__)

FORMAT = 1  # of the folder's layout; bump it to orphan every earlier entry
# The job's own settings that do not change the prepared data. Every other one is in the key (a
# setting added later is, until it is listed here), and of the Trainer's settings FT_SEED, when it
# splits the data (FT_VALIDATION_SPLIT). The model and the data are in the key by their content.
NOT_PREPROCESSING = frozenset(
    {
        "model",
        "train_data",
        "eval_data",
        "mlm_probability",  # masks are drawn per batch by the collator
        "padding_free",  # how the collator lays out a batch
        "lora_r",
        "lora_alpha",
        "lora_dropout",
        "lora_target_modules",
        "load_in_4bit",
        "merge_adapter",
        "early_stopping_patience",
        "tune_trials",
        "tune_metric",
        "tune_direction",
        "tune_search_space",
        "num_processes",
        "output_uri",
        "checkpoint_uri",
        "cache_uri",
        "cache_prepared_data",
        "allow_pickle_weights",
        "preprocessing_num_workers",  # the same rows either way (packing always uses one process)
        "work_dir",
        "checkpoint_keep_last",
        "transfer_concurrency",
        "spot_notice_poll_seconds",
        "log_level",
        "secrets",
    }
)
# Files of a model folder that tokenization reads (config.json: the tokenizer class and limits).
TOKENIZER_FILES = re.compile(
    r"^(tokenizer.*|special_tokens_map\.json|added_tokens\.json|vocab\..*|merges\.txt|.*\.model|"
    r"chat_template\..*|config\.json)$"
)
LIBRARIES = ("transformers", "tokenizers", "datasets", "pyarrow")
PACKAGE = Path(__file__).resolve().parents[1]
CODE = ("tasks/__init__.py", "job/preprocess.py", "job/data.py", "job/prepared.py")
INFO_FILE = "info.json"


# -- the key (pure) ---------------------------------------------------------------------------------


def preprocessing_settings(settings) -> dict:
    """The settings in the key: the job's own but NOT_PREPROCESSING, and the seed when it splits the data."""
    chosen = {
        name: getattr(settings, name) for name in sorted(JobSettings.model_fields) if name not in NOT_PREPROCESSING
    }
    if settings.validation_split:
        chosen["seed"] = settings.seed if settings.seed is not None else 42  # the Trainer's default seed
    return chosen


def key_inputs(
    settings: dict, data_files: dict, tokenizer: dict[str, str], libraries: dict[str, str], code: dict[str, str]
) -> dict:
    """Everything the prepared data depends on, as one JSON-able mapping."""
    return {
        "format": FORMAT,
        "settings": settings,
        "data": data_files,
        "tokenizer": tokenizer,
        "libraries": libraries,
        "code": code,
    }


def cache_key(inputs: dict) -> str:
    """32 hex digits of the sha256 of `inputs` as canonical JSON."""
    text = json.dumps(inputs, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def entry(key: str) -> str:
    return f"prepared/{key}"


def encode_info(value):
    """The task's info as JSON: a dict with keys other than strings (id2label's ints) becomes
    {"__items__": [[key, value], ...]}, so that it reads back as it was."""
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value) and "__items__" not in value:
            return {k: encode_info(v) for k, v in value.items()}
        return {"__items__": [[k, encode_info(v)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return [encode_info(v) for v in value]
    return value


def decode_info(value):
    if isinstance(value, dict):
        if set(value) == {"__items__"}:
            return {k: decode_info(v) for k, v in value["__items__"]}
        return {k: decode_info(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode_info(v) for v in value]
    return value


# -- what goes into the key (effects) --------------------------------------------------------------


def tokenizer_digests(model_dir: Path) -> dict[str, str]:
    return {p.name: sha256(p) for p in sorted(model_dir.iterdir()) if p.is_file() and TOKENIZER_FILES.match(p.name)}


def library_versions() -> dict[str, str]:
    return {name: importlib.metadata.version(name) for name in LIBRARIES}


def code_digests(task_name: str) -> dict[str, str]:
    """sha256 of the preprocessing modules' source, the task's own module included."""
    paths = [*CODE, f"tasks/{tasks.MODULES[task_name]}.py"]
    return {rel: sha256(PACKAGE / rel) for rel in paths}


def key_for(settings, model_dir: Path, data_sources: dict[str, sources.DataSource]) -> tuple[str, dict]:
    """The key of the prepared data for `settings`, and what it covers."""
    inputs = key_inputs(
        preprocessing_settings(settings),
        {setting: source.identity for setting, source in sorted(data_sources.items())},
        tokenizer_digests(model_dir),
        library_versions(),
        code_digests(settings.task),
    )
    return cache_key(inputs), inputs


# -- preparing --------------------------------------------------------------------------------------


def build(settings, task, tokenizer, data_sources, mirror, work: Path, stages) -> tasks.Prepared:
    """Load the data, let the task prepare it, tokenize it: the tokenized data and the task's info."""
    with stages.timed("data_download"):
        local = sources.local_data(settings, data_sources, mirror, work)
        splits = data.load_splits(local, work, task.columns(settings))
    with stages.timed("prepare"):
        ready = task.prepare(splits, settings)
        with preprocess.progress("tokenize FT_TRAIN_DATA", len(ready.train)):
            train = task.tokenize(ready.train, tokenizer, settings, ready.info)
        evaluation = None
        if ready.eval is not None:
            with preprocess.progress("tokenize the evaluation data", len(ready.eval)):
                evaluation = task.tokenize(ready.eval, tokenizer, settings, ready.info)
    return tasks.Prepared(train, evaluation, ready.info)


def write(folder: Path, prepared: tasks.Prepared) -> None:
    """The prepared data as a folder: train/ and eval/ (Dataset.save_to_disk) and info.json."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    prepared.train.save_to_disk(str(folder / "train"))
    if prepared.eval is not None:
        prepared.eval.save_to_disk(str(folder / "eval"))
    (folder / INFO_FILE).write_text(json.dumps(encode_info(prepared.info), indent=1))


def read(folder: Path) -> tasks.Prepared:
    evaluation = datasets.load_from_disk(str(folder / "eval")) if (folder / "eval").is_dir() else None
    info = decode_info(json.loads((folder / INFO_FILE).read_text()))
    return tasks.Prepared(datasets.load_from_disk(str(folder / "train")), evaluation, info)


@dataclasses.dataclass
class Cache:
    """The prepared data at FT_CACHE_URI: `fetch` (each machine) and `save` (main process)."""

    uri: str
    work: Path
    concurrency: int

    def __post_init__(self):
        self.store = storage.open_store(self.uri, self.concurrency)

    def fetch(self, key: str, announce: bool = True) -> Path | None:
        """A verified local copy of the prepared data with `key`, or None (a miss)."""
        got = stored.fetch(self.store, entry(key), self.work / "prepared" / key, self.concurrency, "prepared data")
        if got is None:
            return None
        if announce:
            log.info("prepared data: cache hit at %s%s (key %s)", self.store.uri, entry(key), key)
        return got[0]

    def save(self, key: str, inputs: dict, build, stages) -> None:
        """Prepare the data (`build()`), then keep it under `key`: files first, manifest last."""
        log.info("prepared data: miss at %s%s (key %s): preparing, then saved", self.store.uri, entry(key), key)
        prepared = build()
        started = time.monotonic()
        with stages.timed("prepared_save"):
            folder = self.work / "prepared" / key
            write(folder, prepared)
            manifest = stored.put(self.store, folder, entry(key), self.concurrency, {"prepared": inputs})
            storage.adopt(folder, self.store.uri + entry(key) + "/", self.concurrency)
        megabytes = sum(meta["size"] for meta in manifest["files"].values()) / 1e6
        log.info(
            "prepared data: saved at %s%s (%.1f MB in %.1f s)",
            self.store.uri,
            entry(key),
            megabytes,
            time.monotonic() - started,
        )
