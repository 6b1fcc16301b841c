"""Perplexity for the language-model tasks (causal-lm, masked-lm): exp(loss), computed from the
evaluation loss without keeping logits (vocabulary × tokens would fill memory)."""

from __future__ import annotations

import math

from transformers import Trainer


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else math.inf  # exp overflows a float past ~709


def add_perplexity(metrics: dict, prefix: str = "eval") -> dict:
    """`{prefix}_perplexity` = exp(`{prefix}_loss`), when the loss is there (inf if it overflows)."""
    loss = metrics.get(f"{prefix}_loss")
    if loss is not None:
        metrics[f"{prefix}_perplexity"] = perplexity(loss)
    return metrics


class PerplexityTrainer(Trainer):
    """Evaluation without keeping logits, adding `<prefix>_perplexity` to every evaluation's
    metrics, so it is logged (the `[metrics]` lines), seen by callbacks and returned (metrics.json)."""

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ):
        output = super().evaluation_loop(
            dataloader,
            description,
            prediction_loss_only=True,
            ignore_keys=ignore_keys,
            metric_key_prefix=metric_key_prefix,
        )
        add_perplexity(output.metrics, metric_key_prefix)
        return output
