"""The job's result at FT_OUTPUT_URI: a loadable model folder at its root and metrics.json,
written last (its presence means the model next to it is complete)."""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from entrypoint.config import sensitive
from entrypoint.errors import WorldError
from entrypoint.io import storage
from entrypoint.job import adapters

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
SETTINGS_FILE = "settings.json"


def save_model(trainer, folder: Path, merge_adapter: bool = False) -> Path:
    """The trained model, its config (with id2label) and its tokenizer, as safetensors. A LoRA run
    writes its adapter alone (adapter_config.json, adapter_model.safetensors), or with
    `merge_adapter` the base model with the adapter merged in, loadable without peft."""
    shutil.rmtree(folder, ignore_errors=True)
    if merge_adapter and adapters.is_adapter(trainer.model):
        adapters.merged(trainer.model).save_pretrained(str(folder))
        if trainer.processing_class is not None:
            trainer.processing_class.save_pretrained(str(folder))
    else:
        trainer.save_model(str(folder))
    return folder


def publish(
    folder: Path,
    metrics: dict,
    output_uri: str,
    concurrency: int,
    keep: Iterable[str] = (),
    superseded: Callable[[], bool] | None = None,
) -> str:
    """Upload (or copy) the model folder, then metrics.json; returns where it went.

    An earlier output there is replaced: its metrics.json is removed first (it must never vouch
    for a half-replaced model), and in the end only the new model's files remain, besides what
    lies under the locations in `keep` (the checkpoint and TensorBoard locations, which live under
    FT_OUTPUT_URI by default). An attempt that `superseded()` says a newer one replaced publishes
    nothing (WorldError)."""
    store = storage.open_store(output_uri, concurrency)
    files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
    files.pop(METRICS_FILE, None)
    fence(superseded, store.uri)
    store.delete([METRICS_FILE])
    storage.upload_many(store, files, concurrency)
    kept = kept_prefixes(store.uri, keep)
    if kept is not None:
        stale = [k for k in store.list() if k not in files and k != METRICS_FILE and not k.startswith(kept)]
        if stale:
            log.info("removing %d file(s) of an earlier output at %s", len(stale), store.uri)
            store.delete(stale)
    fence(superseded, store.uri)
    store.write_bytes(METRICS_FILE, json.dumps(metrics, indent=2, sort_keys=True).encode())
    log.info("model and %s written to %s", METRICS_FILE, store.uri)
    return store.uri


def fence(superseded: Callable[[], bool] | None, where: str) -> None:
    if superseded is not None and superseded():
        raise WorldError(f"a newer attempt of this job took over; this attempt does not publish its model to {where}")


def kept_prefixes(output: str, keep: Iterable[str]) -> tuple[str, ...] | None:
    """The keys under `output` (a store's uri) that `keep`'s locations hold, as key prefixes;
    None when one of them is `output` itself (then nothing there may be removed)."""
    prefixes = []
    for uri in keep:
        location = storage.as_prefix(uri) if storage.is_s3(uri) else str(Path(uri).expanduser().absolute()) + os.sep
        base = output if storage.is_s3(output) else str(Path(output).absolute()) + os.sep
        if location == base:
            return None
        if location.startswith(base):
            prefixes.append(location[len(base) :])
    return tuple(prefixes)


def write_settings(folder: Path, settings) -> Path:
    """settings.json in the model folder, published with the model (so before metrics.json): the
    settings the job ran with (see settings_record)."""
    path = folder / SETTINGS_FILE
    path.write_text(json.dumps(settings_record(settings), indent=2, sort_keys=True))
    return path


def settings_record(settings) -> dict[str, Any]:
    """Every job setting (defaults included) and each TrainingArguments field that was set, under
    their names without FT_ (a file FT_CONFIG reads back), secrets redacted (config/sensitive.py: by
    name, and the secret values this process knows of wherever else they appear)."""
    from entrypoint.config.settings import JobSettings
    from entrypoint.config.trainer_fields import TRAINER_FIELDS

    values = settings.model_dump(mode="json")
    kept = {name: value for name, value in values.items() if name in JobSettings.model_fields or value is not None}
    secret_fields = {name for name, decision in TRAINER_FIELDS.items() if decision.secret}
    return sensitive.redact(kept, known=sensitive.known(), names=secret_fields)
