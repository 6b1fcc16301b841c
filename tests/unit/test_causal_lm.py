"""causal-lm task: label masking (instruction, chat), packing, padding, perplexity."""

import math

import datasets
import pytest

from entrypoint.config.platform import Runtime
from entrypoint.config.settings import load_settings
from entrypoint.errors import SettingsError, UserError
from entrypoint.tasks import causal_lm
from entrypoint.tasks.causal_lm import IGNORE
from entrypoint.tasks.perplexity import perplexity
from tests.support import tiny, tiny_causal

BASE = {"FT_MODEL": "s3://b/models/m/", "FT_TRAIN_DATA": "s3://b/data/train.csv", "FT_TASK": "causal-lm"}


def settings(**env):
    return load_settings({**BASE, **{f"FT_{k.upper()}": str(v) for k, v in env.items()}}, Runtime("local"))


@pytest.fixture(scope="module")
def texts():
    return [r["text"] for r in tiny.sst2_rows("train", 200)]


@pytest.fixture(scope="module")
def tokenizer(texts):
    return tiny_causal.build_tokenizer(texts)


def targets(tokenizer, ids, labels) -> str:
    """The text of the tokens that carry a loss."""
    return tokenizer.decode([t for t, label in zip(ids, labels, strict=True) if label != IGNORE])


def test_columns_follow_the_kind_of_data():
    assert causal_lm.columns(settings()) == {"FT_TEXT_COLUMN": "text"}
    assert causal_lm.columns(settings(prompt_column="q", response_column="a")) == {
        "FT_PROMPT_COLUMN": "q",
        "FT_RESPONSE_COLUMN": "a",
    }
    assert causal_lm.columns(settings(messages_column="chat")) == {"FT_MESSAGES_COLUMN": "chat"}


def test_instruction_loss_covers_the_response_and_eos_only(tokenizer):
    out = causal_lm.encode_instruction(["Review: a fine film.\nSentiment:"], [" positive"], tokenizer, 128)
    ids, labels = out["input_ids"][0], out["labels"][0]
    prompt_len = len(tokenizer("Review: a fine film.\nSentiment:")["input_ids"])
    assert labels[:prompt_len] == [IGNORE] * prompt_len
    assert labels[prompt_len:] == ids[prompt_len:]
    assert targets(tokenizer, ids, labels) == " positive" + tiny_causal.EOS
    assert tokenizer.decode(ids) == "Review: a fine film.\nSentiment: positive" + tiny_causal.EOS


def test_chat_loss_covers_assistant_turns_only(tokenizer):
    chat = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "how was the film"},
        {"role": "assistant", "content": "a fine film"},
        {"role": "user", "content": "and the acting"},
        {"role": "assistant", "content": "dull"},
    ]
    out = causal_lm.encode_chat([chat], tokenizer, 128)
    ids, labels = out["input_ids"][0], out["labels"][0]
    assert tokenizer.decode(ids) == tokenizer.apply_chat_template(chat, tokenize=False)
    assert targets(tokenizer, ids, labels) == "a fine film<|im_end|>\ndull<|im_end|>\n"
    # Everything before the first answer, the generation prompt included, is context.
    first = next(i for i, label in enumerate(labels) if label != IGNORE)
    assert tokenizer.decode(ids[:first]).endswith("<|im_start|>assistant\n")


def test_chat_rows_may_be_json_text_and_bad_rows_are_user_errors(tokenizer):
    as_text = '[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]'
    out = causal_lm.encode_chat([as_text], tokenizer, 128)
    assert targets(tokenizer, out["input_ids"][0], out["labels"][0]) == "hello<|im_end|>\n"
    with pytest.raises(UserError, match="list of {role, content}"):
        causal_lm.encode_chat(["just text"], tokenizer, 128)


def test_chat_without_a_template_is_a_user_error(texts):
    plain = tiny_causal.build_tokenizer(texts, chat_template=False)
    ds = datasets.Dataset.from_list(
        [{"chat": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}]
    )
    with pytest.raises(UserError, match="chat template"):
        causal_lm.tokenize(ds, plain, settings(messages_column="chat"), {})


def test_pack_cuts_the_concatenation_into_full_blocks():
    ids = [[1, 2, 3], [4, 5], [6, 7, 8, 9, 10, 11]]
    packed = causal_lm.pack(ids, [[-100, 2, 3], [4, 5], [6, 7, 8, 9, 10, 11]], 4)
    assert packed["input_ids"] == [[1, 2, 3, 4], [5, 6, 7, 8]]  # the tail [9, 10, 11] is dropped
    assert packed["labels"] == [[-100, 2, 3, 4], [5, 6, 7, 8]]


def test_packed_text_is_blocks_of_max_length_with_eos_between_documents(tokenizer, texts):
    ds = datasets.Dataset.from_dict({"text": texts[:100]})
    out = causal_lm.tokenize(ds, tokenizer, settings(packing="true", max_length=32), {})
    total = sum(len(tokenizer(t)["input_ids"]) + 1 for t in texts[:100])
    assert len(out) == total // 32
    assert all(len(row) == 32 for row in out["input_ids"])
    assert out["labels"] == out["input_ids"]
    flat = [t for row in out["input_ids"] for t in row]
    assert flat.count(tokenizer.eos_token_id) >= 50  # documents stay apart
    again = causal_lm.tokenize(ds, tokenizer, settings(packing="true", max_length=32), {})
    assert again["input_ids"] == out["input_ids"]  # deterministic: resume sees the same blocks


def test_plain_text_is_truncated_ends_with_eos_and_every_token_is_a_target(tokenizer, texts):
    ds = datasets.Dataset.from_dict({"text": texts[:20]})
    out = causal_lm.tokenize(ds, tokenizer, settings(max_length=16), {})
    assert len(out) == 20
    for ids, labels in zip(out["input_ids"], out["labels"], strict=True):
        assert len(ids) <= 16 and ids[-1] == tokenizer.eos_token_id and labels == ids


def test_examples_whose_response_is_truncated_away_are_dropped(tokenizer):
    ds = datasets.Dataset.from_dict({"q": ["short prompt:", "a very long prompt " * 20], "a": [" yes", " no"]})
    out = causal_lm.tokenize(ds, tokenizer, settings(prompt_column="q", response_column="a", max_length=24), {})
    assert len(out) == 1 and targets(tokenizer, out["input_ids"][0], out["labels"][0]) == " yes" + tiny_causal.EOS
    with pytest.raises(UserError, match="no example has a target token"):
        causal_lm.tokenize(
            ds.select([1]), tokenizer, settings(prompt_column="q", response_column="a", max_length=24), {}
        )


def test_collator_pads_right_with_ignored_labels_and_eos_as_pad(tokenizer):
    tok = tiny_causal.build_tokenizer(["a b c"] * 5)
    assert tok.pad_token is None
    collate = causal_lm.collator(tok, None, settings())
    assert tok.pad_token == tok.eos_token
    batch = collate([{"input_ids": [5, 6, 7], "labels": [IGNORE, 6, 7]}, {"input_ids": [8], "labels": [8]}])
    assert batch["input_ids"].shape == (2, 8)
    assert batch["input_ids"][1].tolist() == [8] + [tok.pad_token_id] * 7
    assert batch["labels"][1].tolist() == [8] + [IGNORE] * 7
    assert batch["attention_mask"].tolist() == [[1, 1, 1] + [0] * 5, [1] + [0] * 7]


def test_evaluation_reports_perplexity_without_keeping_logits(tmp_path, texts):
    from transformers import AutoTokenizer, TrainingArguments

    folder = tiny_causal.build_tiny_llama(tmp_path / "model", texts)
    tok = AutoTokenizer.from_pretrained(folder)
    s = settings(max_length=32)
    model = causal_lm.load_model(folder, "tiny", {}, s, 0)
    ds = causal_lm.tokenize(datasets.Dataset.from_dict({"text": texts[:16]}), tok, s, {})
    trainer_cls, extra = causal_lm.TASK.trainer(s, {})
    trainer = trainer_cls(
        model=model,
        args=TrainingArguments(str(tmp_path / "out"), per_device_eval_batch_size=8, report_to=[], use_cpu=True),
        eval_dataset=ds,
        data_collator=causal_lm.collator(tok, model, s),
        **extra,
    )
    metrics = trainer.evaluate()
    assert metrics["eval_perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]))
    assert metrics["eval_perplexity"] > 100  # random weights over a 400-token vocabulary
    prediction = trainer.predict(ds)
    assert prediction.predictions is None  # no vocabulary-sized logits kept


def test_perplexity_does_not_overflow():
    assert perplexity(0.0) == 1.0 and perplexity(1e4) == math.inf


# -- padding-free batches ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory, texts):
    return tiny_causal.build_tiny_llama(tmp_path_factory.mktemp("llama") / "model", texts)


def examples_of(kind: str, tok, max_length: int = 128) -> datasets.Dataset:
    """Six SST-2 rows of `kind` (text, instruction, chat), tokenized by the task."""
    rows = tiny_causal.sst2_as(kind, tiny.sst2_rows("train", 6))
    extra = {"text": {}, "instruction": {"prompt_column": "prompt", "response_column": "response"}}
    s = settings(max_length=max_length, **extra.get(kind, {"messages_column": "messages"}))
    return causal_lm.tokenize(datasets.Dataset.from_list(rows), tok, s, {})


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("kind", ["text", "instruction", "chat"])
def test_padding_free_batch_computes_each_example_as_if_alone(tiny_llama, kind, attention, caplog):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, attn_implementation=attention)
    model.config.use_cache = False  # as the Trainer sets it (FT_USE_CACHE, default false)
    examples = [dict(e) for e in examples_of(kind, tok)]
    with caplog.at_level("INFO", logger="entrypoint.tasks.causal_lm"):
        batch = causal_lm.collator(tok, model, settings(per_device_train_batch_size=6))(examples)
    assert f"padding-free batches: 6 examples flattened per batch with position ids (attention: {attention}" in (
        caplog.text
    )
    assert "FT_PADDING_FREE=false turns this off" in caplog.text
    assert "attention_mask" not in batch and batch["input_ids"].shape == (1, sum(len(e["input_ids"]) for e in examples))

    # Labels: each example's own (IGNORE on prompts and non-assistant turns), and IGNORE on its first
    # token, which no token of its own predicts.
    assert batch["labels"][0].tolist() == [t for e in examples for t in [IGNORE] + e["labels"][1:]]
    assert batch["position_ids"][0].tolist() == [p for e in examples for p in range(len(e["input_ids"]))]

    model.eval()
    with torch.no_grad():
        flat = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
        alone = torch.cat([model(input_ids=torch.tensor([e["input_ids"]])).logits[0] for e in examples])
        # The loss equals the padded batch's: the same targets, each predicted from its own example only.
        padded = causal_lm.PadCollator(tok.pad_token_id)(examples)
        flat_loss = model(**batch).loss
        padded_loss = model(**padded).loss
    torch.testing.assert_close(flat, alone, atol=1e-5, rtol=0)
    assert flat_loss.item() == pytest.approx(padded_loss.item(), abs=1e-5)


def test_a_model_that_mixes_flattened_examples_gets_padded_batches(tok_and_mamba, caplog):
    tok, mamba = tok_and_mamba
    with caplog.at_level("INFO", logger="entrypoint.tasks.causal_lm"):
        collate = causal_lm.collator(tok, mamba, settings(per_device_train_batch_size=4))
    assert isinstance(collate, causal_lm.PadCollator)
    assert "lets flattened examples affect each other" in caplog.text
    with caplog.at_level("WARNING", logger="entrypoint.tasks.causal_lm"):
        caplog.clear()
        assert isinstance(causal_lm.collator(tok, mamba, settings(padding_free="true")), causal_lm.PadCollator)
    assert [r.levelname for r in caplog.records] == ["WARNING"]  # asked for explicitly: a warning


@pytest.fixture(scope="module")
def tok_and_mamba(texts):
    """A Mamba model: its recurrent state runs from one token to the next whatever the position ids."""
    import torch
    from transformers import MambaConfig, MambaForCausalLM

    tok = tiny_causal.build_tokenizer(texts)
    torch.manual_seed(0)
    config = MambaConfig(vocab_size=len(tok), hidden_size=16, state_size=4, num_hidden_layers=2, intermediate_size=32)
    return tok, MambaForCausalLM(config)


def test_probe_tells_a_mixing_model_from_one_that_keeps_examples_apart(tiny_llama, tok_and_mamba):
    from transformers import AutoModelForCausalLM

    from entrypoint.tasks import padding_free

    llama = AutoModelForCausalLM.from_pretrained(tiny_llama)
    llama.train()
    assert padding_free.mixing_share(llama) < 1e-4 and padding_free.keeps_examples_apart(llama)
    assert llama.training  # the probe leaves the mode as it found it
    assert padding_free.mixing_share(tok_and_mamba[1]) > 0.5 and not padding_free.keeps_examples_apart(tok_and_mamba[1])


@pytest.mark.parametrize(
    ("setting", "packing", "batch", "use_cache", "apart", "padding_free", "says"),
    [
        ("auto", False, 8, False, True, True, "8 examples flattened per batch"),
        ("false", False, 8, False, True, False, "FT_PADDING_FREE=false"),
        ("auto", True, 8, False, True, False, "FT_PACKING=true already fills every row"),
        ("true", True, 8, False, True, True, "flattened per batch"),  # the user's explicit choice
        ("auto", False, 1, False, True, False, "one example per batch"),
        ("true", False, 1, False, True, True, "1 examples flattened"),
        ("auto", False, 8, True, True, False, "FT_USE_CACHE=true"),
        ("true", False, 8, True, True, False, "FT_USE_CACHE=true"),
        ("auto", False, 8, False, False, False, "lets flattened examples affect each other"),
        ("auto", False, 8, False, None, False, "no model to check"),
    ],
)
def test_batch_plan(setting, packing, batch, use_cache, apart, padding_free, says):
    from entrypoint.tasks.padding_free import plan

    chosen = plan(setting, packing, batch, use_cache, "sdpa", apart)
    assert chosen.padding_free is padding_free and says in chosen.message
    assert ("FT_PADDING_FREE=false turns this off" in chosen.message) is padding_free


def test_padding_free_setting_takes_auto_true_false_in_any_case():
    assert settings().padding_free == "auto"
    assert settings(padding_free="TRUE").padding_free == "true"
    assert load_settings({**BASE, "FT_PADDING_FREE": " False "}, Runtime("local")).padding_free == "false"
    with pytest.raises(SettingsError, match="FT_PADDING_FREE"):
        settings(padding_free="sometimes")


def test_loading_logs_the_attention_implementation_and_why(tiny_llama, caplog):
    with caplog.at_level("INFO", logger="entrypoint.job.modeling"):
        causal_lm.load_model(tiny_llama, "tiny", {}, settings(), 0)
    assert "attention: sdpa: transformers' default where the model and torch support it" in caplog.text
    assert "flash_attention_2 not installed" in caplog.text


@pytest.mark.parametrize(
    ("implementation", "supports_sdpa", "requested", "says"),
    [
        ("sdpa", True, None, "sdpa: transformers' default"),
        ("eager", False, None, "eager: this architecture has no sdpa implementation"),
        ("eager", True, "eager", "eager: FT_ATTN_IMPLEMENTATION asks for it"),
        ("flash_attention_2", True, None, "flash_attention_2: as the model's config asks"),
    ],
)
def test_attention_reason(implementation, supports_sdpa, requested, says):
    from entrypoint.job.modeling import attention_reason

    assert attention_reason(implementation, supports_sdpa, False, requested).startswith(says)


def test_a_model_with_flash_attention_on_the_cpu_is_probed_with_sdpa_in_its_place(tiny_llama, monkeypatch):
    from transformers import AutoModelForCausalLM

    from entrypoint.tasks import padding_free

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    switched = []

    def set_attn_implementation(name):  # flash_attn is not installed here: only the config changes
        switched.append(name)
        model.config._attn_implementation = name

    monkeypatch.setattr(model, "set_attn_implementation", set_attn_implementation)
    model.config._attn_implementation = "flash_attention_2"
    assert padding_free.keeps_examples_apart(model)
    assert switched == ["sdpa", "flash_attention_2"] and model.config._attn_implementation == "flash_attention_2"


@pytest.mark.parametrize(
    "requested, cuda, installed, says",
    [
        ("flash_attention_2", False, False, "this machine has no CUDA GPU"),
        ("flash_attention_2", True, False, "flash_attn (pip install flash-attn) is not installed"),
        ("flash_attention_3", True, False, "flash_attn_interface is not installed"),
        ("flash_attention_2", True, True, None),
        ("sdpa", False, False, None),
        (None, False, False, None),
    ],
)
def test_flash_attention_that_cannot_run_here_is_the_users_error(requested, cuda, installed, says):
    from entrypoint.job.modeling import attention_problem

    problem = attention_problem(requested, cuda, installed)
    if says is None:
        assert problem is None
    else:
        assert says in problem and f"FT_ATTN_IMPLEMENTATION={requested}" in problem and "set it to sdpa" in problem
