"""The base model and its tokenizer, from a local folder or an S3 prefix, and the precision."""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed

from . import storage
from .errors import UserError

log = logging.getLogger(__name__)


def fetch_model(uri: str, work_dir: Path, concurrency: int) -> Path:
    """A local folder holding the model named by FT_MODEL."""
    folder = storage.fetch(storage.as_prefix(uri) if storage.is_s3(uri) else uri, work_dir / "model", concurrency)
    if not (folder / "config.json").is_file():
        raise UserError(f"FT_MODEL: {uri} holds no config.json. Point FT_MODEL at a folder written by save_pretrained (model and tokenizer).")
    return folder


def load_tokenizer(folder: Path, uri: str):
    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except Exception as exc:  # noqa: BLE001 - any failure here means the folder lacks a usable tokenizer
        raise UserError(f"FT_MODEL: cannot load a tokenizer from {uri} ({exc}). Save the tokenizer next to the model (tokenizer.save_pretrained).") from exc


def load_classifier(folder: Path, uri: str, id2label: dict[int, str], seed: int):
    """A sequence-classification model with a head for `id2label` (a new head if sizes differ).

    The new head's initial weights come from `seed`, so two runs of the same job start equal.
    """
    set_seed(seed)
    try:
        return AutoModelForSequenceClassification.from_pretrained(
            str(folder),
            num_labels=len(id2label),
            id2label=id2label,
            label2id={name: i for i, name in id2label.items()},
            ignore_mismatched_sizes=True,
        )
    except Exception as exc:  # noqa: BLE001 - an unloadable model folder is the user's input
        raise UserError(f"FT_MODEL: cannot load {uri} as a sequence-classification model: {exc}") from exc


def precision(bf16: bool | None, fp16: bool | None) -> dict[str, bool]:
    """bf16 where the GPU supports it, else fp16 on CUDA, fp32 on CPU; explicit settings win."""
    if bf16 is not None or fp16 is not None:
        return {"bf16": bool(bf16), "fp16": bool(fp16)}
    if torch.cuda.is_available():
        if torch.cuda.is_bf16_supported():
            return {"bf16": True, "fp16": False}
        return {"bf16": False, "fp16": True}
    return {"bf16": False, "fp16": False}
