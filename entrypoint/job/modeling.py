"""The base model and its tokenizer, from a local folder or an S3 prefix, and the precision."""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import torch
from transformers import AutoTokenizer

from entrypoint.errors import UserError
from entrypoint.io import storage

log = logging.getLogger(__name__)


def fetch_model(uri: str, work_dir: Path, concurrency: int) -> Path:
    """A local folder holding the model named by FT_MODEL."""
    source = storage.as_prefix(uri) if storage.is_s3(uri) else uri
    folder = storage.fetch(source, work_dir / "model", concurrency, label="FT_MODEL")
    if not (folder / "config.json").is_file():
        raise UserError(
            f"FT_MODEL: {uri} holds no config.json. "
            "Point FT_MODEL at a folder written by save_pretrained (model and tokenizer)."
        )
    return folder


# Without any of these, AutoTokenizer quietly builds a tokenizer of the special tokens alone
# (transformers 5): every word would become [UNK] and training would "work".
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
)
SAFE_WEIGHTS = ".safetensors"
PICKLE_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# The Auto classes' mappings {model_type: class} each task loads its model with (seq2seq also
# warm-starts an encoder-decoder from any encoder, so it is not checked here).
TASK_MAPPINGS = {
    "sequence-classification": (
        "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
        "AutoModelForSequenceClassification",
    ),
    "causal-lm": ("MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", "AutoModelForCausalLM"),
    "masked-lm": ("MODEL_FOR_MASKED_LM_MAPPING_NAMES", "AutoModelForMaskedLM"),
}


def check_model(folder: Path, settings) -> None:
    """What can be told of FT_MODEL's folder before loading it: a readable config.json for a model
    the task can load, and weights that are whole safetensors files (pickle weights, which can run
    code when loaded, only with FT_ALLOW_PICKLE_WEIGHTS)."""
    check_config(folder, settings)
    check_weights(folder, settings)
    check_attention(getattr(settings, "attn_implementation", None))


FLASH_PACKAGES = {
    "flash_attention_2": "flash_attn (pip install flash-attn)",
    "flash_attention_3": "flash_attn_interface",
}


def attention_problem(requested: str | None, cuda: bool, installed: bool) -> str | None:
    """Why FT_ATTN_IMPLEMENTATION cannot run here (FlashAttention needs a CUDA GPU and its package),
    or None (pure: see check_attention)."""
    if requested not in FLASH_PACKAGES or (cuda and installed):
        return None
    missing = (
        "this machine has no CUDA GPU" if not cuda else f"the package {FLASH_PACKAGES[requested]} is not installed"
    )
    return (
        f"FT_ATTN_IMPLEMENTATION={requested} needs a CUDA GPU and {FLASH_PACKAGES[requested]}; {missing}. "
        "Unset FT_ATTN_IMPLEMENTATION (transformers' default, SDPA where the model has it) or set it to sdpa."
    )


def check_attention(requested: str | None) -> None:
    """FT_ATTN_IMPLEMENTATION that this machine cannot run, as the user's error before the model loads
    (transformers would fail at from_pretrained with an ImportError)."""
    if requested not in FLASH_PACKAGES:
        return
    from transformers.utils import is_flash_attn_2_available, is_flash_attn_3_available

    installed = is_flash_attn_2_available() if requested == "flash_attention_2" else is_flash_attn_3_available()
    problem = attention_problem(requested, torch.cuda.is_available(), installed)
    if problem:
        raise UserError(problem)


def check_config(folder: Path, settings) -> None:
    """A readable config.json for a model the task can load, and tokenizer files next to it."""
    uri = settings.model
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise UserError(
            f"FT_MODEL: the config.json of {uri} is not JSON ({exc}). Point FT_MODEL at a folder written by "
            "save_pretrained."
        ) from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if settings.task in TASK_MAPPINGS and model_type:
        from transformers.models.auto import modeling_auto

        mapping, auto_class = TASK_MAPPINGS[settings.task]
        if model_type not in getattr(modeling_auto, mapping):
            raise UserError(
                f"FT_MODEL: {uri} is a {model_type!r} model, which transformers cannot load for "
                f"FT_TASK={settings.task} (no {auto_class} for it). Point FT_MODEL at a model for that task, or "
                "set FT_TASK to one this model does."
            )
    files = [p for p in folder.iterdir() if p.is_file()]
    if not any(p.name in TOKENIZER_FILES for p in files):
        raise UserError(
            f"FT_MODEL: {uri} holds no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...). Save the tokenizer "
            "next to the model (tokenizer.save_pretrained(folder))."
        )


def check_weights(folder: Path, settings) -> None:
    """Weights that are whole safetensors files (pickle only with FT_ALLOW_PICKLE_WEIGHTS)."""
    uri = settings.model
    files = [p for p in folder.iterdir() if p.is_file()]
    safe = [p for p in files if p.name.endswith(SAFE_WEIGHTS)]
    pickled = sorted(p.name for p in files if p.name.endswith(PICKLE_WEIGHTS) and "training_args" not in p.name)
    if not safe and not pickled:
        raise UserError(
            f"FT_MODEL: {uri} holds no weights (no *.safetensors file). Save the model with save_pretrained."
        )
    if not safe and not settings.allow_pickle_weights:
        raise UserError(
            f"FT_MODEL: {uri} holds pickle weights only ({', '.join(pickled)}); loading pickle can run code. "
            "Save the model as safetensors (model.save_pretrained(folder) does), or set FT_ALLOW_PICKLE_WEIGHTS=true "
            "if you trust its origin."
        )
    for path in safe:
        _check_safetensors(path, uri)


def _check_safetensors(path: Path, uri: str) -> None:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as handle:
            handle.keys()
    except (SafetensorError, OSError) as exc:
        raise UserError(
            f"FT_MODEL: {path.name} of {uri} is not a whole safetensors file ({exc}): a truncated or corrupt "
            "upload. Upload the model folder again."
        ) from None


def load_tokenizer(folder: Path, uri: str):
    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except Exception as exc:
        raise UserError(
            f"FT_MODEL: cannot load a tokenizer from {uri} ({exc}). "
            "Save the tokenizer next to the model (tokenizer.save_pretrained)."
        ) from exc


def model_kwargs(settings) -> dict:
    """Extra from_pretrained arguments: FT_ATTN_IMPLEMENTATION, and the 4-bit base of QLoRA
    (FT_LOAD_IN_4BIT), GPU only."""
    attention = getattr(settings, "attn_implementation", None)
    kwargs = {"attn_implementation": attention} if attention else {}
    if not getattr(settings, "load_in_4bit", False):
        return kwargs
    if not torch.cuda.is_available():
        raise UserError(
            "FT_LOAD_IN_4BIT (QLoRA) needs a CUDA GPU and bitsandbytes; this machine has no GPU. "
            "Unset FT_LOAD_IN_4BIT to train LoRA on a full-precision base."
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise UserError("FT_LOAD_IN_4BIT (QLoRA) needs the bitsandbytes package: pip install bitsandbytes.") from None
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {
        **kwargs,
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute
        ),
    }


def attention_reason(
    implementation: str | None, supports_sdpa: bool, flash_installed: bool, requested: str | None = None
) -> str:
    """Which attention implementation a loaded model runs, and why (pure: see log_attention)."""
    if requested and implementation == requested:
        return f"{implementation}: FT_ATTN_IMPLEMENTATION asks for it"
    flash = (
        "flash_attention_2 is installed but not used (FT_GPU_DEFAULTS uses it on an Ampere or newer GPU in bf16/fp16)"
        if flash_installed
        else "flash_attention_2 not installed"
    )
    if implementation == "sdpa":
        return f"sdpa: transformers' default where the model and torch support it; {flash}"
    if implementation == "eager" and not supports_sdpa:
        return "eager: this architecture has no sdpa implementation in transformers"
    if implementation:
        return f"{implementation}: as the model's config asks"
    return "unknown: the model does not say"


def log_attention(model, requested: str | None = None) -> str:
    """Log (and return) the attention implementation `model` runs and why (`requested`: the
    setting's value, if any)."""
    from transformers.utils import is_flash_attn_2_available

    line = attention_reason(
        getattr(model.config, "_attn_implementation", None),
        bool(getattr(model, "_supports_sdpa", False)),
        is_flash_attn_2_available(),
        requested,
    )
    log.info("attention: %s", line)
    return line


def precision(bf16: bool | None, fp16: bool | None) -> dict[str, bool]:
    """The precision the user set, else fp32; on a GPU, gpu_defaults may then choose bf16."""
    return {"bf16": bool(bf16), "fp16": bool(fp16)}


def use_attention(model, implementation: str) -> str | None:
    """Switch a loaded model to an attention implementation where it has it; the one it then uses."""
    current = getattr(model.config, "_attn_implementation", None)
    if current != implementation:
        try:
            model.set_attn_implementation(implementation)
        except (ValueError, ImportError, AttributeError) as exc:  # the model (or this machine) lacks it
            log.info("attention stays %s: %s", current, exc)
    return getattr(model.config, "_attn_implementation", None)


@contextlib.contextmanager
def one_line_load_report(uri: str) -> Iterator[None]:
    """transformers 5 logs a table for every model it loads (its LOAD REPORT: missing, unexpected
    and mismatched weights); the job logs the one fact that matters instead: which weights are new."""
    import transformers.utils.logging as hf_logging

    reports: dict[int, str] = {}  # one record reaches each handler: keep it once

    def keep(record: logging.LogRecord) -> bool:
        if "LOAD REPORT" in record.getMessage():
            reports[id(record)] = record.getMessage()
            return False
        return True

    loggers = [hf_logging.get_logger(), logging.getLogger()]
    handlers = {h for logger in loggers for h in logger.handlers}
    for handler in handlers:
        handler.addFilter(keep)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(keep)
    for report in reports.values():
        log.info("%s", load_report_line(report, uri))


ANSI = re.compile(r"\x1b\[[0-9;]*m")  # transformers sets the title in bold on a terminal


def load_report_line(report: str, uri: str) -> str:
    """One line from a LOAD REPORT table: the model class and the weights by status (pure)."""
    lines = ANSI.sub("", report).splitlines()
    title = lines[0].split("LOAD REPORT")[0].strip().split()[-1] if lines and lines[0].strip() else "model"
    by_status: dict[str, list[str]] = {}
    for line in lines:
        cells = [c.strip() for c in line.split("|")]
        if len(cells) >= 2 and cells[1].isupper() and cells[0] and cells[0] != "Key" and not cells[0].startswith("-"):
            by_status.setdefault(cells[1], []).append(cells[0])
    if not by_status:
        return f"loaded {title} from {uri}"
    words = {"MISSING": "newly initialised (trained from scratch)", "UNEXPECTED": "not used"}
    parts = [f"{words.get(k, k.lower())}: {', '.join(v)}" for k, v in sorted(by_status.items())]
    return f"loaded {title} from {uri}; " + "; ".join(parts)
