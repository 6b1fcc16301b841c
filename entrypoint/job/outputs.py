"""The job's result at FT_OUTPUT_URI: a loadable model folder at its root and metrics.json,
written last (its presence means the model next to it is complete)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from entrypoint.io import storage
from entrypoint.job import adapters

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"


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


def publish(folder: Path, metrics: dict, output_uri: str, concurrency: int) -> str:
    """Upload (or copy) the model folder, then metrics.json; returns where it went."""
    store = storage.open_store(output_uri, concurrency)
    files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
    files.pop(METRICS_FILE, None)
    storage.upload_many(store, files, concurrency)
    store.write_bytes(METRICS_FILE, json.dumps(metrics, indent=2, sort_keys=True).encode())
    log.info("model and %s written to %s", METRICS_FILE, store.uri)
    return store.uri
