"""LoRA via peft: what trains, defaults, merging, and QLoRA's clear refusal on CPU."""

import pytest
import torch

from entrypoint.config.platform import Runtime
from entrypoint.config.settings import load_settings
from entrypoint.errors import UserError
from entrypoint.job import adapters, outputs
from entrypoint.tasks import causal_lm, classification
from tests.support import tiny, tiny_causal

BASE = {"FT_MODEL": "s3://b/models/m/", "FT_TRAIN_DATA": "s3://b/data/train.csv", "FT_TASK": "causal-lm"}


def settings(**env):
    return load_settings({**BASE, **{f"FT_{k.upper()}": str(v) for k, v in env.items()}}, Runtime("local"))


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    texts = [r["text"] for r in tiny.sst2_rows("train", 200)]
    return tiny_causal.build_tiny_llama(tmp_path_factory.mktemp("llama"), texts)


def llama(folder, s=None):
    return causal_lm.load_model(folder, "tiny", {}, s or settings(), 0)


def trainable(model) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def test_without_lora_r_the_model_is_unchanged(llama_dir):
    model = llama(llama_dir)
    assert adapters.apply(model, settings()) is model


def test_lora_trains_adapters_on_the_architectures_default_modules_only(llama_dir, caplog):
    caplog.set_level("INFO")
    model = adapters.apply(llama(llama_dir), settings(lora_r=4))
    assert adapters.is_adapter(model)
    names = trainable(model)
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
    assert {n.split(".lora_")[0].rsplit(".", 1)[1] for n in names} == {"q_proj", "v_proj"}  # peft's mapping for llama
    config = model.peft_config["default"]
    assert (config.r, config.lora_alpha, config.lora_dropout) == (4, 8, 0.05)
    assert config.base_model_name_or_path == "s3://b/models/m/"
    assert "LoRA r=4 alpha=8" in caplog.text and "parameters train" in caplog.text


def test_target_modules_setting_and_unknown_architectures():
    assert adapters.target_modules(settings(lora_r=4, lora_target_modules="gate_proj,up_proj"), "llama") == [
        "gate_proj",
        "up_proj",
    ]
    assert adapters.target_modules(settings(lora_r=4), "llama") is None  # peft knows llama
    assert adapters.target_modules(settings(lora_r=4), "brand-new-arch") == "all-linear"


def test_all_linear_skips_the_output_head(llama_dir):
    model = llama(llama_dir)
    model.config.model_type = "brand-new-arch"  # as if peft had no mapping for it
    wrapped = adapters.apply(model, settings(lora_r=2))
    targets = {name.rsplit(".", 1)[-1] for name in wrapped.peft_config["default"].target_modules}
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= targets
    assert "lm_head" not in targets


def test_unknown_target_module_is_a_user_error(llama_dir):
    with pytest.raises(UserError, match="FT_LORA_TARGET_MODULES"):
        adapters.apply(llama(llama_dir), settings(lora_r=4, lora_target_modules="query_key_value"))


def test_sequence_classification_also_trains_the_new_head(tmp_path):
    folder = tiny.build_tiny_bert(tmp_path / "bert", [r["text"] for r in tiny.sst2_rows("train", 200)])
    s = load_settings({**BASE, "FT_TASK": "sequence-classification", "FT_LORA_R": "4"}, Runtime("local"))
    model = classification.load_model(folder, "tiny", {"id2label": {0: "neg", 1: "pos"}}, s, 0)
    names = trainable(adapters.apply(model, s))
    assert any("classifier" in n for n in names) and any(".lora_A." in n for n in names)
    assert not any("word_embeddings" in n for n in names)


def test_merged_model_computes_what_the_adapter_model_computes_and_loads_without_peft(llama_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = adapters.apply(llama(llama_dir), settings(lora_r=4, lora_dropout=0))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name:  # zero at init: make the adapter do something
                p.normal_(0, 0.5)
    model.eval()
    ids = torch.tensor([[3, 17, 42, 99, 7, 250]])
    with torch.no_grad():
        adapted, base = model(input_ids=ids).logits, model.get_base_model()
        with model.disable_adapter():
            plain = model(input_ids=ids).logits
    assert not torch.allclose(adapted, plain, atol=1e-4)  # the adapter matters

    class FakeTrainer:  # what outputs.save_model uses of a Trainer
        def __init__(self, model, tokenizer):
            self.model, self.processing_class = model, tokenizer

    folder = outputs.save_model(
        FakeTrainer(model, AutoTokenizer.from_pretrained(llama_dir)), tmp_path / "out", merge_adapter=True
    )
    assert base is not None and not (folder / "adapter_config.json").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert not any("lora" in n for n, _ in reloaded.named_parameters())
    with torch.no_grad():
        merged = reloaded(input_ids=ids).logits
    torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=1e-5)
    assert AutoTokenizer.from_pretrained(folder).chat_template == tiny_causal.CHAT_TEMPLATE


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_qlora_on_cpu_is_a_user_error_that_says_what_to_do(llama_dir):
    s = settings(lora_r=4, load_in_4bit="true")
    with pytest.raises(UserError, match="needs a CUDA GPU.*Unset FT_LOAD_IN_4BIT"):
        causal_lm.load_model(llama_dir, "tiny", {}, s, 0)
    with pytest.raises(UserError, match="not loaded in 4 bits"):
        adapters.apply(llama(llama_dir), s)
