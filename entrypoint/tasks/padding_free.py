"""Padding-free causal-lm batches (FT_PADDING_FREE): a batch's examples end to end in one row, with
position ids restarting at 0 for every example and the label of each example's first token ignored
(transformers' DataCollatorWithFlattening). No pad token is computed, and no example attends to
another: transformers' masking utilities read the example boundaries from the position ids (sdpa,
eager, flex) and flash attention turns them into variable-length sequences.

That holds only where the model builds its attention mask that way and nothing carries state from
one token to the next outside attention (a Mamba layer does), and only without a KV cache in the
forward pass (with one, the boundaries are not looked for). So whether a model can is not taken on
trust: `keeps_examples_apart` runs it once on two short examples, flattened and alone."""

from __future__ import annotations

import dataclasses
import logging

import torch
from transformers import DataCollatorWithFlattening

log = logging.getLogger(__name__)

IGNORE = -100
OFF = "FT_PADDING_FREE=false turns this off"
# Mixing in the other example moves the logits of a model that mixes them about as much as running the
# two examples as one sequence does; numerical noise (bf16 kernels on other shapes) stays far below.
MIXING_SHARE = 0.1


@dataclasses.dataclass(frozen=True)
class Plan:
    """How causal-lm batches are laid out, and the log line that says so (and why)."""

    padding_free: bool
    message: str


def plan(
    setting: str, packing: bool, batch_size: int, use_cache: bool, attention: str | None, apart: bool | None
) -> Plan:
    """The batch layout from FT_PADDING_FREE (auto|true|false), FT_PACKING, the per-device batch
    size, FT_USE_CACHE, the attention implementation and the probe's verdict (None: not run)."""
    if setting == "false":
        return Plan(False, "padded batches: FT_PADDING_FREE=false")
    if setting == "auto" and packing:
        return Plan(
            False,
            "padded batches: FT_PACKING=true already fills every row with FT_MAX_LENGTH tokens of concatenated "
            "documents, so there is no padding to remove (FT_PADDING_FREE=true flattens them anyway)",
        )
    if setting == "auto" and batch_size < 2:
        return Plan(False, "padded batches: one example per batch has no padding to remove")
    if use_cache:
        return Plan(
            False,
            "padded batches, not padding-free: with FT_USE_CACHE=true the model does not look for example "
            "boundaries in the position ids, so flattened examples would attend to each other",
        )
    if attention is None or apart is None:
        return Plan(False, "padded batches: no model to check for padding-free batches")
    if not apart:
        return Plan(
            False,
            f"padded batches, not padding-free: this model (attention: {attention}) lets flattened examples affect "
            "each other (checked on two examples), so each example keeps its own row",
        )
    return Plan(
        True,
        f"padding-free batches: {batch_size} examples flattened per batch with position ids (attention: "
        f"{attention}, which keeps flattened examples apart: checked on two examples); {OFF}",
    )


def mixing_share(model) -> float:
    """How much flattening moves the model's logits for a second example, as a share of how much
    running both examples as one sequence does: ~0 where the examples stay apart, ~1 where they mix."""
    vocab = model.get_input_embeddings().num_embeddings
    device = next(model.parameters()).device
    first = torch.tensor([[(31 * i + 7) % vocab for i in range(12)]], device=device)
    second = torch.tensor([[(17 * i + 3) % vocab for i in range(6)]], device=device)
    joined = torch.cat([first, second], dim=1)
    positions = torch.cat([torch.arange(12), torch.arange(6)]).unsqueeze(0).to(device)
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            alone = model(input_ids=second, use_cache=False).logits[0].float()
            flat = model(input_ids=joined, position_ids=positions, use_cache=False).logits[0, 12:].float()
            mixed = model(input_ids=joined, use_cache=False).logits[0, 12:].float()
    finally:
        model.train(training)
    moved, mixing = (flat - alone).abs().max().item(), (mixed - alone).abs().max().item()
    return moved / mixing if mixing > 0 else 0.0


def keeps_examples_apart(model) -> bool:
    """Whether `model` keeps flattened examples apart (mixing_share below MIXING_SHARE); False when
    it cannot even run the probe (it takes no position ids, say).

    Flash attention kernels run only on the GPU the Trainer moves the model to later, and for them
    transformers turns the position ids into variable-length sequences itself: a model on the CPU
    with one is probed with sdpa in its place, which checks the rest of the model."""
    attention = attention_of(model)
    stand_in = bool(attention and "flash" in attention and next(model.parameters()).device.type == "cpu")
    try:
        if stand_in:
            model.set_attn_implementation("sdpa")
        try:
            share = mixing_share(model)
        finally:
            if stand_in:
                model.set_attn_implementation(attention)
    except (TypeError, ValueError, RuntimeError) as exc:
        log.info("padding-free probe failed (%s: %s); batches are padded", type(exc).__name__, exc)
        return False
    log.debug("padding-free probe: mixing share %.2e", share)
    return share < MIXING_SHARE


def attention_of(model) -> str | None:
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None) if config is not None else None


def flattening_collator() -> DataCollatorWithFlattening:
    """One row per batch, position ids restarting per example, IGNORE at each example's first label
    (no example is trained to predict its first token from the one before it)."""
    return DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE)
