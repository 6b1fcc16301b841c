"""Tokenization: truncation to FT_MAX_LENGTH, no padding here (the collator pads each batch to its
own longest example, which is what keeps short-text batches cheap)."""
from __future__ import annotations

import datasets
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

# BERT-style models take 512 positions; tokenizers without a limit report a huge sentinel.
DEFAULT_MAX_LENGTH = 512


def max_length(tokenizer: PreTrainedTokenizerBase, requested: int | None) -> int:
    limit = tokenizer.model_max_length if 0 < (tokenizer.model_max_length or 0) < 100_000 else DEFAULT_MAX_LENGTH
    return min(requested, limit) if requested else min(limit, DEFAULT_MAX_LENGTH)


def tokenize(ds: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, settings) -> datasets.Dataset:
    """`ds` with input_ids/attention_mask (and labels) only."""
    length = max_length(tokenizer, settings.max_length)
    text, pair = settings.text_column, settings.text_pair_column

    def encode(batch):
        first = [str(t) if t is not None else "" for t in batch[text]]
        second = [str(t) if t is not None else "" for t in batch[pair]] if pair else None
        return tokenizer(first, second, truncation=True, max_length=length)

    keep = {"labels"}
    return ds.map(encode, batched=True, remove_columns=[c for c in ds.column_names if c not in keep], desc="tokenize")


def collator(tokenizer: PreTrainedTokenizerBase) -> DataCollatorWithPadding:
    # pad_to_multiple_of=8 lets fp16/bf16 tensor cores work on padded batches.
    return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8)
