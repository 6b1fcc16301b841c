"""Tokenization helpers shared by the tasks: truncation to FT_MAX_LENGTH and no padding here (the
collators pad each batch to its own longest example, which keeps short-text batches cheap)."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

# BERT-style models take 512 positions; tokenizers without a limit report a huge sentinel.
DEFAULT_MAX_LENGTH = 512


def max_length(tokenizer: PreTrainedTokenizerBase, requested: int | None, cap: int = DEFAULT_MAX_LENGTH) -> int:
    """FT_MAX_LENGTH, or the tokenizer's own limit, at most `cap`."""
    limit = tokenizer.model_max_length if 0 < (tokenizer.model_max_length or 0) < 100_000 else cap
    return min(requested, limit) if requested else min(limit, cap)
