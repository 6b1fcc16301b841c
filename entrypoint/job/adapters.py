"""LoRA adapters (peft) instead of full fine-tuning when FT_LORA_R is set, on a 4-bit base for QLoRA
(FT_LOAD_IN_4BIT); and the merge of the adapter into its base for a standalone output model.

The Trainer saves a PeftModel's checkpoints as the adapter alone (plus optimizer state) and loads
them back on resume, so resuming needs nothing more here."""

from __future__ import annotations

import logging

from entrypoint.errors import UserError

log = logging.getLogger(__name__)

# peft's task types, by FT_TASK. SEQ_CLS also trains the (new) classifier head in full: peft adds
# the usual head names ("classifier", "score") to modules_to_save. masked-lm has none: its head
# is the pretrained one (BERT ties it to the input embeddings), so a plain PeftModel fits.
TASK_TYPES = {
    "sequence-classification": "SEQ_CLS",
    "causal-lm": "CAUSAL_LM",
    "seq2seq": "SEQ_2_SEQ_LM",
    "masked-lm": None,
}


def target_modules(settings, model_type: str | None):
    """FT_LORA_TARGET_MODULES; else None (peft's choice for architectures it knows); else every
    linear layer except the output head ("all-linear")."""
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    if settings.lora_target_modules:
        return list(settings.lora_target_modules)
    return None if model_type in TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING else "all-linear"


def lora_config(settings, model_type: str | None):
    from peft import LoraConfig

    return LoraConfig(
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha or 2 * settings.lora_r,
        lora_dropout=settings.lora_dropout,
        target_modules=target_modules(settings, model_type),
        task_type=TASK_TYPES[settings.task],
    )


def apply(model, settings):
    """`model` wrapped with fresh LoRA adapters (only they, and a classifier head, train), or
    `model` unchanged when FT_LORA_R is not set."""
    if settings.lora_r is None:
        return model
    from peft import get_peft_model, prepare_model_for_kbit_training

    # transformers 5 renames gradient_checkpointing to activation_checkpointing; either may be set.
    gradient_checkpointing = bool(
        getattr(settings, "gradient_checkpointing", None) or getattr(settings, "activation_checkpointing", None)
    )
    if settings.load_in_4bit:
        if not getattr(model, "is_loaded_in_4bit", False):
            raise UserError(
                "FT_LOAD_IN_4BIT is set but the model was not loaded in 4 bits "
                "(QLoRA needs a CUDA GPU and bitsandbytes)."
            )
        # Casts norms to fp32 and, with gradient checkpointing, lets gradients reach the adapters.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    elif gradient_checkpointing:
        # Frozen embeddings give checkpointed blocks inputs without grad: nothing would reach the adapters.
        model.enable_input_require_grads()
    model_type = getattr(model.config, "model_type", None)
    config = lora_config(settings, model_type)
    try:
        peft_model = get_peft_model(model, config)
    except ValueError as exc:
        raise UserError(
            f"FT_LORA_TARGET_MODULES: peft cannot put adapters on {config.target_modules!r} of this "
            f"{model_type} model ({exc}). Name its linear layers (e.g. q_proj,v_proj), or unset it."
        ) from exc
    # Recorded in adapter_config.json: the model the adapter belongs to, not our scratch folder.
    peft_model.peft_config["default"].base_model_name_or_path = settings.model
    trainable, total = peft_model.get_nb_trainable_parameters()
    kinds = sorted({name.rsplit(".", 1)[-1] for name in peft_model.peft_config["default"].target_modules})
    log.info(
        "LoRA r=%d alpha=%d dropout=%g on %s: %s of %s parameters train (%.2f%%)",
        config.r,
        config.lora_alpha,
        config.lora_dropout,
        ",".join(kinds),
        f"{trainable:,}",
        f"{total:,}",
        100 * trainable / max(total, 1),
    )
    return peft_model


def is_adapter(model) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def merged(model):
    """The base model with the adapter's weights added in: a plain transformers model (no peft
    needed to load it). Changes `model` in place."""
    if getattr(model, "is_loaded_in_4bit", False):
        log.warning("merging the adapter into a 4-bit base rounds the merged weights to 4 bits")
    return model.merge_and_unload()
