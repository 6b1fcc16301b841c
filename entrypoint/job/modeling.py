"""The base model and its tokenizer, from a local folder or an S3 prefix, and the precision."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import AutoTokenizer

from entrypoint.errors import UserError
from entrypoint.io import storage

log = logging.getLogger(__name__)


def fetch_model(uri: str, work_dir: Path, concurrency: int) -> Path:
    """A local folder holding the model named by FT_MODEL."""
    folder = storage.fetch(storage.as_prefix(uri) if storage.is_s3(uri) else uri, work_dir / "model", concurrency)
    if not (folder / "config.json").is_file():
        raise UserError(
            f"FT_MODEL: {uri} holds no config.json. Point FT_MODEL at a folder written by save_pretrained (model and tokenizer)."
        )
    return folder


def load_tokenizer(folder: Path, uri: str):
    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except Exception as exc:
        raise UserError(
            f"FT_MODEL: cannot load a tokenizer from {uri} ({exc}). Save the tokenizer next to the model (tokenizer.save_pretrained)."
        ) from exc


def model_kwargs(settings) -> dict:
    """Extra from_pretrained arguments: the 4-bit base of QLoRA (FT_LOAD_IN_4BIT), GPU only."""
    if not getattr(settings, "load_in_4bit", False):
        return {}
    if not torch.cuda.is_available():
        raise UserError(
            "FT_LOAD_IN_4BIT (QLoRA) needs a CUDA GPU and bitsandbytes; this machine has no GPU. Unset FT_LOAD_IN_4BIT to train LoRA on a full-precision base."
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise UserError("FT_LOAD_IN_4BIT (QLoRA) needs the bitsandbytes package: pip install bitsandbytes.") from None
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute
        )
    }


def precision(bf16: bool | None, fp16: bool | None) -> dict[str, bool]:
    """bf16 where the GPU supports it, else fp16 on CUDA, fp32 on CPU; explicit settings win."""
    if bf16 is not None or fp16 is not None:
        return {"bf16": bool(bf16), "fp16": bool(fp16)}
    if torch.cuda.is_available():
        if torch.cuda.is_bf16_supported():
            return {"bf16": True, "fp16": False}
        return {"bf16": False, "fp16": True}
    return {"bf16": False, "fp16": False}
