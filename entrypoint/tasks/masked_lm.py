"""masked-lm: continue pre-training an encoder (BERT-style) on the text column: FT_MLM_PROBABILITY
of the tokens are masked in every batch (reproducibly, see SeededMaskingCollator), and the loss is
on those. Metric: perplexity, exp(eval_loss), computed without keeping logits."""

from __future__ import annotations

import dataclasses
import hashlib

import torch
from transformers import AutoModelForMaskedLM, DataCollatorForLanguageModeling, set_seed

from entrypoint.errors import UserError
from entrypoint.job import modeling, preprocess

from . import Prepared, Task, lengths
from .perplexity import PerplexityTrainer


def columns(settings) -> dict[str, str | None]:
    return {"FT_TEXT_COLUMN": settings.text_column}


def prepare(splits, settings) -> Prepared:
    return Prepared(splits.train, splits.eval, {})


def load_model(folder, uri: str, info: dict, settings, seed: int):
    """The model with its masked-LM head (a new head, seeded, if the folder holds an encoder only)."""
    set_seed(seed)
    try:
        return AutoModelForMaskedLM.from_pretrained(str(folder), **modeling.model_kwargs(settings))
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(
            f"FT_MODEL: cannot load {uri} as a masked-LM model (an encoder such as BERT or RoBERTa): {exc}"
        ) from exc


def tokenize(ds, tokenizer, settings, info):
    """Each non-blank text as one example, truncated; the collator pads and masks per batch."""
    if tokenizer.mask_token is None:
        raise UserError(
            "FT_TASK=masked-lm needs a tokenizer with a mask token (BERT, RoBERTa, ...); "
            "this model's has none. Use FT_TASK=causal-lm for a decoder-only model."
        )
    length = preprocess.max_length(tokenizer, settings.max_length)
    text = settings.text_column
    ds = ds.filter(
        lambda batch: [t is not None and str(t).strip() != "" for t in batch[text]],
        batched=True,
        desc="drop blank texts",
    )

    def encode(batch):
        # The special-tokens mask tells the collator which positions must never be masked.
        return tokenizer(
            [str(t) for t in batch[text]], truncation=True, max_length=length, return_special_tokens_mask=True
        )

    return ds.map(
        encode, batched=True, remove_columns=ds.column_names, desc="tokenize", **preprocess.map_options(ds, settings)
    )


@dataclasses.dataclass
class SeededMaskingCollator(DataCollatorForLanguageModeling):
    """The MLM collator with masks drawn from a generator seeded by (mask_seed, the batch's token
    ids) instead of torch's global RNG.

    Why: the data loader collates one batch ahead (accelerate's DataLoaderShard), so the batch
    after a checkpoint is masked before that checkpoint is saved, from an RNG state the checkpoint
    does not hold; a resumed run would mask it differently and end with different weights. Seeded
    by its contents, a batch gets the same masks however it is reached (resumed, prefetched, in a
    worker process), evaluation masks are the same at every evaluation, and masks still change
    between epochs because the shuffled batches do.
    """

    mask_seed: int = 0

    def torch_mask_tokens(self, inputs, special_tokens_mask=None, offset_mapping=None):
        self.generator = torch.Generator().manual_seed(batch_seed(self.mask_seed, inputs))
        return super().torch_mask_tokens(inputs, special_tokens_mask=special_tokens_mask, offset_mapping=offset_mapping)


def batch_seed(seed: int, input_ids: torch.Tensor) -> int:
    """A 63-bit seed that depends on `seed` and every token id (and the shape) of the batch."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(f"{seed}:{tuple(input_ids.shape)}:".encode())
    digest.update(input_ids.to(torch.int64).numpy().tobytes())
    return int.from_bytes(digest.digest(), "little") & (2**63 - 1)


class MaskedLMTrainer(lengths.LengthSampling, PerplexityTrainer):
    """Training batches of similar length; evaluation in the data's order (the loss is a mean over
    each batch's masked tokens, and the masks follow the batch's contents: sorting would change it)."""


def collator(tokenizer, model, settings):
    seed = settings.seed if settings.seed is not None else 42  # the Trainer's default seed
    return SeededMaskingCollator(
        tokenizer,
        mlm=True,
        mlm_probability=settings.mlm_probability,
        pad_to_multiple_of=lengths.pad_multiple(torch.cuda.is_available()),
        mask_seed=seed,
    )


TASK = Task(
    name="masked-lm",
    columns=columns,
    prepare=prepare,
    load_model=load_model,
    tokenize=tokenize,
    collator=collator,
    metrics=lambda tokenizer, settings, info: None,  # no logits kept: perplexity comes from eval_loss
    trainer=lambda settings, info: (MaskedLMTrainer, {}),
    metric_for_best_model="loss",
    argument_defaults={"train_sampling_strategy": "group_by_length"},
)
