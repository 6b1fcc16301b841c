"""masked-lm: tokenization, the reproducible masking collator, perplexity."""

import math

import pytest
import torch

from entrypoint.config.platform import Runtime
from entrypoint.config.settings import load_settings
from entrypoint.errors import UserError
from entrypoint.tasks import masked_lm
from entrypoint.tasks.perplexity import add_perplexity
from tests.support import tiny


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    folder = tiny.build_tiny_bert(tmp_path_factory.mktemp("bert"), [r["text"] for r in tiny.sst2_rows("train", 300)])
    return AutoTokenizer.from_pretrained(folder)


def settings(**extra):
    env = {
        "FT_MODEL": "m",
        "FT_TRAIN_DATA": "t.csv",
        "FT_TASK": "masked-lm",
        **{f"FT_{k.upper()}": v for k, v in extra.items()},
    }
    return load_settings(env, Runtime("local"))


def batch_of(tokenizer, texts, **extra):
    import datasets

    ds = masked_lm.tokenize(datasets.Dataset.from_dict({"text": texts}), tokenizer, settings(**extra), {})
    return [dict(row) for row in ds]


TEXTS = [r["text"] for r in tiny.sst2_rows("validation", 16)]


def test_tokenize_drops_blank_texts_truncates_and_marks_special_tokens(tokenizer):
    rows = batch_of(tokenizer, ["a fine film", "", None, "   ", "the worst movie of the year " * 20], max_length="12")
    assert len(rows) == 2
    assert set(rows[0]) == {"input_ids", "attention_mask", "special_tokens_mask"}
    assert len(rows[1]["input_ids"]) == 12
    assert rows[1]["special_tokens_mask"][0] == 1 and rows[1]["special_tokens_mask"][-1] == 1
    assert rows[1]["input_ids"][-1] == tokenizer.sep_token_id


def test_collator_masks_about_the_requested_fraction_and_never_special_tokens(tokenizer):
    rows = batch_of(tokenizer, TEXTS * 4)
    batch = masked_lm.collator(tokenizer, None, settings(mlm_probability="0.3", seed="1"))(rows)
    labels, inputs = batch["labels"], batch["input_ids"]
    assert inputs.shape[1] == max(len(r["input_ids"]) for r in rows)  # padded to the longest (CPU: no multiple of 8)
    special = torch.isin(labels, torch.tensor(tokenizer.all_special_ids))
    assert not special.any()  # [CLS], [SEP], [PAD] never become targets
    targets = labels != -100
    maskable = sum(sum(1 for s in r["special_tokens_mask"] if s == 0) for r in rows)
    assert 0.2 < targets.sum().item() / maskable < 0.4
    # BERT's 80/10/10: most targets are replaced by [MASK]; untouched positions keep their ids
    assert (inputs[targets] == tokenizer.mask_token_id).float().mean() > 0.6
    original = tokenizer.pad([{"input_ids": r["input_ids"]} for r in rows], return_tensors="pt")["input_ids"]
    assert (inputs[~targets] == original[~targets]).all() and (labels[targets] == original[targets]).all()


def test_masks_depend_on_the_seed_and_the_batch_not_on_the_global_rng(tokenizer):
    rows = batch_of(tokenizer, TEXTS)
    collate = masked_lm.collator(tokenizer, None, settings(seed="3"))
    torch.manual_seed(0)
    first = collate([dict(r) for r in rows])
    torch.manual_seed(12345)
    again = collate([dict(r) for r in rows])
    assert torch.equal(first["labels"], again["labels"]) and torch.equal(first["input_ids"], again["input_ids"])
    other_seed = masked_lm.collator(tokenizer, None, settings(seed="4"))([dict(r) for r in rows])
    assert not torch.equal(first["labels"], other_seed["labels"])
    reordered = collate([dict(r) for r in reversed(rows)])  # another epoch's shuffle: other masks
    assert not torch.equal(first["labels"].flip(0), reordered["labels"])


def test_perplexity_is_exp_of_the_loss_under_the_same_prefix():
    assert add_perplexity({"eval_loss": 2.0}) == {"eval_loss": 2.0, "eval_perplexity": pytest.approx(math.exp(2.0))}
    assert add_perplexity({"test_loss": 0.0}, "test")["test_perplexity"] == 1.0
    assert add_perplexity({"eval_loss": 1e4})["eval_perplexity"] == math.inf
    assert add_perplexity({"eval_accuracy": 0.5}) == {"eval_accuracy": 0.5}


def test_a_tokenizer_without_a_mask_token_is_a_user_error(tokenizer):
    import datasets

    no_mask = tokenizer.__class__.from_pretrained(tokenizer.name_or_path, mask_token=None)
    no_mask.mask_token = None
    with pytest.raises(UserError, match="needs a tokenizer with a mask token"):
        masked_lm.tokenize(datasets.Dataset.from_dict({"text": ["a"]}), no_mask, settings(), {})
