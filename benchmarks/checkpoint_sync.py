"""What checkpoint sync costs, measured side by side in one run against a local S3 (moto) server.

1. Sync overhead: MiniLM fine-tuned on SST-2 with FT_CHECKPOINT_URI on S3 vs a local folder
   (runs alternated a, b, a, b; medians of train_runtime and of the job's wall time).
2. Transfer throughput of one real checkpoint folder: CheckpointSync's upload (sha256 manifest,
   upload_many, manifest last) and `checkpoints.restore` (download, sha256 verify), with and without
   the hashing, against `aws s3 cp --recursive` up and down (medians of --repeats).
2b. The GIL: a Python-bound loop (a GPU training loop's Python thread launching kernels) during
   that checkpoint's upload, uploaded from the job's upload process vs from a thread, vs no upload.
3. Notice to durable: SIGTERM mid-training, `notice_to_durable_s` and the exit code, S3 vs local.

Prints a markdown table of ratios (never asserts a timing) and writes it as JSON with --json.

    .venv/bin/python benchmarks/checkpoint_sync.py [--quick] [--json bench.json]

The AWS CLI pins its own botocore, so it lives in its own venv (--aws-cli-venv, default
.venv-bench/, created with `pip install awscli` when missing; it holds a `*` .gitignore).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import (
    BUCKET,
    REPO,
    Job,
    S3Server,
    aws_env,
    ensure_aws_cli,
    folder_bytes,
    load_1min,
    snapshot_code,
    timed,
    upload_inputs,
)

MB = 1e6


def job_env(args, url: str, tmp: Path, run: str, checkpoint_uri: str, max_steps: int, logging_steps: int = 5) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FT_", "AWS_"))}
    env.update(
        aws_env(url),
        OMP_NUM_THREADS=str(args.threads),
        MKL_NUM_THREADS=str(args.threads),
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
    )
    env.update(
        {
            "FT_TASK": "sequence-classification",
            "FT_MODEL": f"s3://{BUCKET}/inputs/model/",
            "FT_TRAIN_DATA": f"s3://{BUCKET}/inputs/train.csv",
            "FT_OUTPUT_URI": str(tmp / run / "output"),
            "FT_CHECKPOINT_URI": checkpoint_uri,
            "FT_WORK_DIR": str(tmp / run / "work"),
            "FT_MAX_STEPS": str(max_steps),
            "FT_SAVE_STEPS": str(args.save_steps),
            "FT_LOGGING_STEPS": str(logging_steps),
            "FT_PER_DEVICE_TRAIN_BATCH_SIZE": "32",
            "FT_MAX_LENGTH": "64",
            "FT_LEARNING_RATE": "5e-5",
            "FT_SEED": "42",
            "FT_TRANSFER_CONCURRENCY": str(args.concurrency),
        }
    )
    return env


def checkpoint_uri(kind: str, tmp: Path, run: str) -> str:
    return f"s3://{BUCKET}/runs/{run}/checkpoints/" if kind == "s3" else str(tmp / run / "checkpoints")


def count(lines: list[str], pattern: str) -> int:
    return sum(1 for line in lines if re.search(pattern, line))


def phase_overhead(args, server: S3Server, tmp: Path, log, kinds=("s3", "local"), pairs=None) -> dict:
    """Full runs alternated s3, local, s3, local, ...; keeps one local checkpoint folder for phase 2."""
    results = {"s3": [], "local": []}
    kept = None
    for i in range(args.pairs if pairs is None else pairs):
        for kind in kinds:
            server.reset()
            upload_inputs(args.train_rows, tmp)
            run = f"overhead-{kind}-{i}"
            moto_cpu = server.cpu_s()
            job = Job(job_env(args, server.url, tmp, run, checkpoint_uri(kind, tmp, run), args.max_steps))
            rc, wall = job.finish()
            job.save_log(tmp / "logs" / f"{run}.log")
            if rc != 0:
                raise SystemExit(f"{run} exited with {rc}:\n{job.tail()}")
            m = job.metrics()
            row = {
                "train_runtime_s": m["train_runtime"],
                "wall_s": wall,
                "upload_mb_per_s": m.get("upload_mb_per_s"),
                "job_cpu_s": job.cpu_s,
                "moto_cpu_s": server.cpu_s() - moto_cpu,
                "load_1min": load_1min(),
                "durable": count(job.stderr, r"checkpoint \d+ durable"),
                "superseded": count(job.stderr, r"superseded by"),
                "moto_rss_mb": server.rss_mb(),
            }
            results[kind].append(row)
            log(
                f"  {run}: train_runtime {row['train_runtime_s']:.2f} s, wall {wall:.1f} s, "
                f"{row['durable']} checkpoints durable, {row['superseded']} superseded, in-job upload "
                f"{row['upload_mb_per_s']} MB/s, "
                f"CPU s: job {job.cpu_s:.1f}, moto server {row['moto_cpu_s']:.1f}; load {row['load_1min']:.1f}"
            )
            if kind == "local" and kept is None:
                kept = keep_checkpoint(tmp / run / "checkpoints", tmp / "checkpoint-sample")
            shutil.rmtree(tmp / run, ignore_errors=True)
    results["sample"] = kept
    return results


def keep_checkpoint(store_root: Path, dest: Path) -> Path:
    """The newest checkpoint folder of a local store, without our manifest: the Trainer's files."""
    newest = sorted(p for p in store_root.iterdir() if p.name.startswith("checkpoint-"))[-1]
    shutil.copytree(newest, dest, ignore=shutil.ignore_patterns("finetune-manifest.json"))
    return dest


def phase_throughput(args, server: S3Server, sample: Path, tmp: Path, aws: Path, log) -> dict:
    from entrypoint.durability import attempts, checkpoints
    from entrypoint.durability import manifests as mf
    from entrypoint.durability.sync import CheckpointSync
    from entrypoint.io import storage

    env = dict(os.environ, **aws_env(server.url))
    size = folder_bytes(sample)
    step = args.max_steps
    mf.build_manifest(sample, step, 1)  # warm the page cache for every contender alike
    times: dict[str, list[float]] = {
        k: [] for k in ("sync_up", "plain_up", "aws_up", "restore_down", "plain_down", "aws_down")
    }
    aws_cmd = [str(aws), "s3", "cp", "--recursive", "--only-show-errors"]
    for i in range(args.repeats):
        server.reset()
        store = storage.S3Store(f"s3://{BUCKET}/sync/{i}/", args.concurrency)
        generation = attempts.claim_generation(store, "bench")
        staging = tmp / "staging"
        sync = CheckpointSync(store, staging, generation, keep_last=2, concurrency=args.concurrency)

        def sync_upload(sync=sync):
            sync.submit(step, sample)
            sync.wait()
            if sync.stats.failures:
                raise SystemExit("CheckpointSync's upload failed; see the log above")

        times["sync_up"].append(timed(sync_upload))
        plain = storage.S3Store(f"s3://{BUCKET}/plain/{i}/", args.concurrency)
        files = {p.relative_to(sample).as_posix(): p for p in sorted(sample.rglob("*")) if p.is_file()}
        times["plain_up"].append(timed(functools.partial(storage.upload_many, plain, files, args.concurrency)))
        times["aws_up"].append(
            timed(
                functools.partial(
                    subprocess.run, aws_cmd + [str(sample), f"s3://{BUCKET}/aws/{i}/"], env=env, check=True
                )
            )
        )

        down = tmp / "down"
        shutil.rmtree(down, ignore_errors=True)
        seconds, restored = timed_result(
            functools.partial(checkpoints.restore, store, down / "restore", args.concurrency)
        )
        times["restore_down"].append(seconds)
        if not restored:
            raise SystemExit("restore found no complete checkpoint")
        name = mf.store_name(step, generation)
        keys = [f"{name}/{rel}" for rel in files]
        times["plain_down"].append(
            timed(
                functools.partial(
                    storage.download_many, store, keys, down / "plain", strip=f"{name}/", concurrency=args.concurrency
                )
            )
        )
        times["aws_down"].append(
            timed(
                functools.partial(
                    subprocess.run,
                    aws_cmd + [f"s3://{BUCKET}/sync/{i}/{name}/", str(down / "aws")],
                    env=env,
                    check=True,
                )
            )
        )
        shutil.rmtree(down, ignore_errors=True)
        summary = ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items())
        log(f"  repeat {i + 1}: {summary}; load {load_1min():.1f}")
    startup = statistics.median(
        timed(lambda: subprocess.run([str(aws), "--version"], capture_output=True, check=True)) for _ in range(3)
    )
    return {"bytes": size, "files": len(files), "seconds": times, "aws_cli_startup_s": startup}


def timed_result(fn) -> tuple[float, object]:
    """timed(fn), and what fn returned."""
    result = []
    seconds = timed(lambda: result.append(fn()))
    return seconds, result[0]


def python_bound_loop(busy) -> float:
    """Iterations per second of small tensor ops while busy() is true: a stand-in for a GPU
    training loop, whose Python thread mostly launches kernels and so needs the GIL all the time."""
    import torch

    x, n, start = torch.ones(16), 0, time.perf_counter()
    while busy():
        for _ in range(100):
            x = x * 1.0001 + 0.1
        n += 100
    return n / (time.perf_counter() - start)


def phase_loop(args, server: S3Server, sample: Path, tmp: Path, log) -> dict:
    """A Python-bound loop's rate during a checkpoint upload, uploaded from a thread of the same
    process vs from the upload process (what the job does), vs the same loop with no upload."""
    import torch

    from entrypoint.durability import attempts, upload_process
    from entrypoint.durability.sync import CheckpointSync
    from entrypoint.io import storage

    torch.set_num_threads(args.threads)
    rates: dict[str, list[float]] = {"none": [], "thread": [], "process": []}
    for i in range(args.repeats):
        for mode in ("thread", "process", "none"):
            if mode == "none":
                end = time.perf_counter() + 3
                rates[mode].append(python_bound_loop(lambda end=end: time.perf_counter() < end))
                continue
            server.reset()
            store = storage.S3Store(f"s3://{BUCKET}/loop/{mode}/{i}/", args.concurrency)
            uploader = upload_process.start() if mode == "process" else None
            sync = CheckpointSync(
                store,
                tmp / "staging",
                attempts.claim_generation(store, "bench"),
                keep_last=1,
                concurrency=args.concurrency,
                uploader=uploader,
            )
            try:
                time.sleep(2)  # the upload process is up: the job starts it long before its first save
                sync.submit(args.max_steps, sample)
                rates[mode].append(python_bound_loop(lambda sync=sync: sync._pending > 0))
                sync.wait()
            finally:
                sync.close()
            if sync.stats.durable_step != args.max_steps:
                raise SystemExit(f"the upload from the {mode} failed; see the log above")
        summary = ", ".join(f"{k} {v[-1]:,.0f}" for k, v in rates.items())
        log(f"  repeat {i + 1}: loop iterations/s {summary}; load {load_1min():.1f}")
    return rates


def phase_notice(args, server: S3Server, tmp: Path, log) -> dict:
    """SIGTERM once training has logged a step; notice_to_durable_s and the exit code. Between two
    periodic saves (S3 and local folder), and on a periodic save's step (S3), where the stop
    checkpoint queues behind the upload of the periodic one."""
    between = args.save_steps * 2 + args.save_steps // 2
    variants = {"s3": ("s3", between), "local": ("local", between), "s3_on_save": ("s3", args.save_steps * 2)}
    out = {}
    for label, (kind, at_step) in variants.items():
        server.reset()
        upload_inputs(args.train_rows, tmp)
        run = f"notice-{label}"

        sent: list[float] = []

        def on_line(job, line, sent=sent, at_step=at_step):
            if not sent and line.startswith("[metrics] step=") and int(line.split()[1].split("=")[1]) >= at_step:
                job.proc.send_signal(signal.SIGTERM)
                sent.append(time.monotonic())

        job = Job(
            job_env(
                args,
                server.url,
                tmp,
                run,
                checkpoint_uri(kind, tmp, run),
                max_steps=10 * args.max_steps,
                logging_steps=1,
            ),
            on_line,
        )  # a line every step: the signal lands on the step chosen
        rc, wall = job.finish()
        job.save_log(tmp / "logs" / f"{run}.log")
        m = job.metrics()
        out[label] = {
            "signal_at_step": at_step,
            "exit_code": rc,
            "notice_to_durable_s": m.get("notice_to_durable_s"),
            "steps_lost": m.get("steps_lost"),
            "wall_s": wall,
            "load_1min": load_1min(),
        }
        log(
            f"  {run}: SIGTERM after step {at_step} was logged: exit {rc}, notice_to_durable_s "
            f"{out[label]['notice_to_durable_s']}, "
            f"steps_lost {out[label]['steps_lost']}; load {out[label]['load_1min']:.1f}"
        )
        if rc != 143:
            log(job.tail())
        shutil.rmtree(tmp / run, ignore_errors=True)
    return out


def ratio(a, b):
    return a / b if a is not None and b else None


def table(r: dict) -> list[dict]:
    med = statistics.median
    rows = []
    ov = r.get("overhead")
    if ov:
        s3, local = ov["s3"], ov["local"]
        rows.append(
            {
                "metric": "train_runtime s (checkpoints to S3 vs local folder)",
                "ours": med(x["train_runtime_s"] for x in s3),
                "baseline": med(x["train_runtime_s"] for x in local),
                "goal": "ratio <= 1.02",
            }
        )
        rows.append(
            {
                "metric": "job wall s, incl. final upload (S3 vs local folder)",
                "ours": med(x["wall_s"] for x in s3),
                "baseline": med(x["wall_s"] for x in local),
                "goal": "info",
            }
        )
        rows.append(
            {
                "metric": "job process CPU s (S3 vs local folder)",
                "ours": med(x["job_cpu_s"] for x in s3),
                "baseline": med(x["job_cpu_s"] for x in local),
                "goal": "info",
            }
        )
        rows.append(
            {
                "metric": "moto server CPU s during the job (S3 vs local folder)",
                "ours": med(x["moto_cpu_s"] for x in s3),
                "baseline": med(x["moto_cpu_s"] for x in local),
                "goal": "info: a real S3 costs this machine nothing",
            }
        )
    tp = r.get("throughput")
    if tp:
        mbps = {k: tp["bytes"] / MB / med(v) for k, v in tp["seconds"].items()}
        rows += [
            {
                "metric": "upload MB/s: CheckpointSync (sha256 manifest) vs aws s3 cp",
                "ours": mbps["sync_up"],
                "baseline": mbps["aws_up"],
                "goal": "ratio >= 1",
            },
            {
                "metric": "upload MB/s: upload_many, no hashing vs aws s3 cp",
                "ours": mbps["plain_up"],
                "baseline": mbps["aws_up"],
                "goal": "ratio >= 1",
            },
            {
                "metric": "download MB/s: restore (sha256 verified) vs aws s3 cp",
                "ours": mbps["restore_down"],
                "baseline": mbps["aws_down"],
                "goal": "ratio >= 1",
            },
            {
                "metric": "download MB/s: download_many, no verify vs aws s3 cp",
                "ours": mbps["plain_down"],
                "baseline": mbps["aws_down"],
                "goal": "ratio >= 1",
            },
        ]
        if ov:
            inside = [x["upload_mb_per_s"] for x in ov["s3"] if x["upload_mb_per_s"]]
            if inside:
                rows.append(
                    {
                        "metric": "upload MB/s during training (job's upload_mb_per_s) vs aws s3 cp idle",
                        "ours": med(inside),
                        "baseline": mbps["aws_up"],
                        "goal": "info",
                    }
                )
    lp = r.get("loop")
    if lp:
        idle = med(lp["none"])
        rows.append(
            {
                "metric": "Python-bound loop during an upload, rate vs no upload: upload process (ours) vs a thread",
                "ours": med(lp["process"]) / idle,
                "baseline": med(lp["thread"]) / idle,
                "goal": "ratio >= 1",
            }
        )
    nt = r.get("notice")
    if nt:
        rows.append(
            {
                "metric": "notice_to_durable_s after SIGTERM (S3 vs local folder)",
                "ours": nt["s3"]["notice_to_durable_s"],
                "baseline": nt["local"]["notice_to_durable_s"],
                "goal": "ours < 30 s (ECS stop timeout); spot gives 120 s",
            }
        )
        rows.append(
            {
                "metric": (
                    f"notice_to_durable_s, SIGTERM on a save step ({nt['s3_on_save']['signal_at_step']}) "
                    "vs between saves (S3)"
                ),
                "ours": nt["s3_on_save"]["notice_to_durable_s"],
                "baseline": nt["s3"]["notice_to_durable_s"],
                "goal": "info",
            }
        )
        rows.append(
            {
                "metric": "exit code after SIGTERM (S3 / local folder)",
                "ours": nt["s3"]["exit_code"],
                "baseline": nt["local"]["exit_code"],
                "goal": "143",
            }
        )
    for row in rows:
        row["ratio"] = None if row["metric"].startswith("exit code") else ratio(row["ours"], row["baseline"])
    return rows


def markdown(rows: list[dict]) -> str:
    def fmt(v):
        return "n/a" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| metric | ours | baseline | ratio | goal |", "|---|---:|---:|---:|---|"]
    lines += [
        f"| {r['metric']} | {fmt(r['ours'])} | {fmt(r['baseline'])} | {fmt(r['ratio'])} | {r['goal']} |" for r in rows
    ]
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller sizes: a smoke run of every phase (~3 min)")
    p.add_argument("--json", type=Path, help="also write the table and the raw measurements here")
    p.add_argument("--phases", default="overhead,throughput,loop,notice", help="comma-separated subset to run")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every training run (default 1)")
    p.add_argument("--aws-cli-venv", type=Path, default=REPO / ".venv-bench", help="venv holding the AWS CLI")
    p.add_argument(
        "--concurrency", type=int, default=8, help="FT_TRANSFER_CONCURRENCY of every job and of phase 2's transfers"
    )
    p.add_argument(
        "--ref", help="benchmark this git commit's entrypoint/ (default: the working tree as it is at start)"
    )
    p.add_argument(
        "--server-nice",
        type=int,
        default=19,
        help="niceness of the moto server (default 19: it gets the CPU time training leaves idle, as a remote S3 "
        "takes none; 0 lets it compete with training as an equal)",
    )
    p.add_argument("--keep", action="store_true", help="keep the scratch folder (with each job's log under logs/)")
    args = p.parse_args(argv)
    sizes = (
        dict(train_rows=256, max_steps=20, save_steps=5, pairs=1, repeats=1)
        if args.quick
        else dict(train_rows=1024, max_steps=60, save_steps=10, pairs=2, repeats=3)
    )
    for k, v in sizes.items():
        setattr(args, k, v)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    phases = set(args.phases.split(","))
    started = time.monotonic()
    load_at_start = load_1min()

    def log(msg):
        print(f"[{time.monotonic() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    aws = ensure_aws_cli(args.aws_cli_venv, log) if "throughput" in phases else None
    tmp = Path(tempfile.mkdtemp(prefix="finetune-bench-"))
    Job.code = tmp / "code"
    code_version = snapshot_code(args.ref, Job.code)
    sys.path.insert(0, str(Job.code))  # phase 2 imports the same snapshot in this process
    log(f"benchmarking entrypoint/ at {code_version}")
    # Stopped with SIGTERM (timeout, CI), unwind through `finally` so no job or server is left behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    server = S3Server(args.server_nice)
    os.environ.update(aws_env(server.url))
    results: dict = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "code": code_version,
    }
    try:
        if phases & {"overhead", "throughput", "loop"}:
            log(
                f"phase 1: {args.pairs} pair(s) of MiniLM runs, {args.max_steps} steps, save every {args.save_steps}, "
                f"OMP_NUM_THREADS={args.threads}"
            )
            overhead = (
                phase_overhead(args, server, tmp, log)
                if "overhead" in phases
                else phase_overhead(args, server, tmp, log, kinds=("local",), pairs=1)
            )  # only for a checkpoint to move
            sample = Path(overhead.pop("sample"))
            if "overhead" in phases:
                results["overhead"] = overhead
        if "throughput" in phases:
            log(f"phase 2: {sample.name} ({folder_bytes(sample) / MB:.0f} MB) up and down, {args.repeats} repeat(s)")
            results["throughput"] = phase_throughput(args, server, sample, tmp, aws, log)
        if "loop" in phases:
            log(f"phase 2b: a Python-bound loop during uploads of {sample.name}, {args.repeats} repeat(s)")
            results["loop"] = phase_loop(args, server, sample, tmp, log)
        if "notice" in phases:
            log("phase 3: SIGTERM mid-training")
            results["notice"] = phase_notice(args, server, tmp, log)
    finally:
        Job.kill_all()
        server.close()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    results["table"] = rows = table(results)
    results["runtime_s"] = round(time.monotonic() - started, 1)
    results["load_1min_at_end"] = load_1min()
    print(markdown(rows))
    print(
        f"\n{results['runtime_s']} s in all; OMP_NUM_THREADS={args.threads}; medians of {args.pairs} run pair(s) and "
        f"{args.repeats} transfer repeat(s); load average {load_at_start:.1f} at start, "
        f"{results['load_1min_at_end']:.1f} at end "
        f"on {os.cpu_count()} CPUs (above the CPU count, other work skews the timings: compare ratios, rerun when idle)"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
