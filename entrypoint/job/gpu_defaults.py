"""finetune's defaults on a CUDA GPU: mixed precision, the optimizer, TF32, the data loader and the
attention implementation.

Each default applies only on a CUDA GPU that can use it and only to a setting the user left unset,
and each comes with a note naming the setting that turns it off; FT_GPU_DEFAULTS=false turns them
all off (the Trainer's own defaults apply: fp32). On CPU nothing here changes anything.

`gpu_defaults` and `attention_default` decide (pure); `GpuInfo.here` reads the GPU.
"""

from __future__ import annotations

import dataclasses
import logging

log = logging.getLogger(__name__)

AMPERE = (8, 0)  # compute capability of the first GPUs with bf16 and TF32 tensor cores (A100)
ALL_OFF = "FT_GPU_DEFAULTS=false turns them all off"


@dataclasses.dataclass(frozen=True)
class GpuInfo:
    name: str  # e.g. "NVIDIA H200"
    capability: tuple[int, int]  # CUDA compute capability (major, minor)
    bf16_supported: bool  # natively, not emulated

    @property
    def label(self) -> str:
        return f"{self.name} (compute {self.capability[0]}.{self.capability[1]})"

    @property
    def ampere_or_newer(self) -> bool:
        return tuple(self.capability) >= AMPERE

    @classmethod
    def here(cls) -> GpuInfo | None:
        """The first visible CUDA GPU, or None without one."""
        import torch

        if not torch.cuda.is_available():
            return None
        major, minor = torch.cuda.get_device_capability()
        # including_emulation=False: torch otherwise reports bf16 on pre-Ampere GPUs (V100, T4), which
        # only emulate it, slowly.
        bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        return cls(torch.cuda.get_device_name(), (major, minor), bf16)


def gpu_defaults(
    gpu: GpuInfo | None,
    packages: frozenset[str],
    overrides: dict,
    workers: int = 0,
    enabled: bool = True,
) -> tuple[dict, list[str]]:
    """TrainingArguments values for the fields the user left unset (`overrides` holds those they
    set), and one note per decision naming the setting that turns it off. `workers`: the data-loader
    workers the job will use; `packages`: the optional packages installed; `enabled`: FT_GPU_DEFAULTS."""
    if gpu is None:
        return {}, []
    if not enabled:
        return {}, [f"GPU defaults off on {gpu.label} (FT_GPU_DEFAULTS=false): fp32 and the Trainer's own defaults"]
    kwargs: dict = {}
    notes: list[str] = []
    if overrides.get("bf16") is None and overrides.get("fp16") is None:
        if gpu.bf16_supported and gpu.ampere_or_newer:
            kwargs["bf16"] = True
            notes.append(f"bf16 mixed precision on {gpu.label} — FT_BF16=false turns it off")
        else:
            # fp16 needs a loss scaler and can overflow or diverge where bf16 would not: the user's call.
            notes.append(
                f"fp32 on {gpu.label}: it has no bf16, and fp16 (a loss scaler, a risk of divergence) is left to "
                "you — FT_FP16=true turns fp16 mixed precision on"
            )
    if overrides.get("optim") is None and not overrides.get("deepspeed"):  # DeepSpeed brings its own optimizer
        kwargs["optim"] = "adamw_torch_fused"
        notes.append("fused AdamW (adamw_torch_fused) — FT_OPTIM=adamw_torch turns it off")
    if overrides.get("tf32") is None and gpu.ampere_or_newer:
        kwargs["tf32"] = True
        notes.append("TF32 matmuls for what runs in fp32 — FT_TF32=false turns it off")
    if overrides.get("dataloader_pin_memory") is None:
        kwargs["dataloader_pin_memory"] = True
        notes.append("pinned host memory for batches — FT_DATALOADER_PIN_MEMORY=false turns it off")
    if overrides.get("dataloader_persistent_workers") is None and workers > 0:
        # The DataLoader refuses persistent workers without workers.
        kwargs["dataloader_persistent_workers"] = True
        notes.append(
            f"persistent data-loader workers ({workers}) across epochs and evaluations — "
            "FT_DATALOADER_PERSISTENT_WORKERS=false turns it off"
        )
    if "liger_kernel" in packages and overrides.get("use_liger_kernel") is None:
        notes.append(
            "liger-kernel is installed but not used: FT_USE_LIGER_KERNEL=true swaps in its fused kernels (less "
            "memory for LLMs of the architectures it supports)"
        )
    return kwargs, notes


def attention_default(
    gpu: GpuInfo | None,
    packages: frozenset[str],
    half_precision: bool,
    requested: str | None,
    enabled: bool = True,
) -> tuple[str | None, str | None]:
    """The attention implementation to switch a loaded model to, and its note; (None, None) where
    the user chose one (FT_ATTN_IMPLEMENTATION, applied at load time), on CPU, or with
    FT_GPU_DEFAULTS=false. FlashAttention-2 needs the flash_attn package, an Ampere or newer GPU
    and bf16/fp16; else SDPA (PyTorch's scaled_dot_product_attention, which picks its own flash or
    memory-efficient kernel)."""
    if gpu is None or not enabled or requested:
        return None, None
    if "flash_attn" in packages and gpu.ampere_or_newer and half_precision:
        return "flash_attention_2", "FlashAttention-2 attention (flash_attn) — FT_ATTN_IMPLEMENTATION=sdpa turns it off"
    return "sdpa", "SDPA attention — FT_ATTN_IMPLEMENTATION=eager turns it off"


def for_job(settings, overrides: dict, kwargs: dict, gpu: GpuInfo | None, packages: frozenset[str]) -> dict:
    """The defaults for the job's TrainingArguments (`kwargs`: those chosen so far), logged once."""
    workers = overrides.get("dataloader_num_workers", kwargs.get("dataloader_num_workers")) or 0
    chosen, notes = gpu_defaults(gpu, packages, overrides, workers, settings.gpu_defaults)
    if notes:
        log.info("GPU defaults: %s (%s)", "; ".join(notes), ALL_OFF)
    return chosen


def apply_attention(model, settings, args, gpu: GpuInfo | None, packages: frozenset[str]) -> None:
    """Switch the loaded model to the default attention implementation, where it has it."""
    from entrypoint.job import modeling

    if gpu is None:  # nothing to decide on CPU
        return
    half = bool(args.bf16 or args.fp16)
    wanted, note = attention_default(gpu, packages, half, settings.attn_implementation, settings.gpu_defaults)
    if wanted is None:
        return
    got = modeling.use_attention(model, wanted)
    if got == wanted:
        log.info("GPU default: %s", note)
    else:
        log.info("GPU default: %s does not fit this model; it uses %s attention", wanted, got)
