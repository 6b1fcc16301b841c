"""The bad-input catalogue: what a new user gets wrong, and what `finetune train` says.

Each case changes one thing in a job that otherwise trains (the baseline test shows it does) and
runs the command against the moto S3 server. Every case must end before training, in seconds,
with the documented exit code (64: the user's mistake), ONE error message that names the setting
or file and the fix, no traceback, and nothing at the output location.

The runs share one warm process that imports the training stack once and forks a fresh child per
run (tests/support/forked.py): each is a real process running `entrypoint.__main__.main` with its
own environment. docs/bad-inputs.md lists the cases; `python -m tests.integration.test_bad_inputs`
prints that table, and a test below keeps the page equal to it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import boto3
import pytest

from tests.conftest import AWS_TEST_ENV
from tests.support import jobs, tiny
from tests.support.fakes import FaultProxy
from tests.support.forked import Forker

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "bad-inputs.md"


@dataclasses.dataclass
class Run:
    """One case's job: its settings and environment, and where to put its inputs."""

    case: str
    bucket: str
    dir: Path
    s3: object
    model_dir: Path
    settings: dict
    env: dict
    proxies: list = dataclasses.field(default_factory=list)
    mounts: list = dataclasses.field(default_factory=list)

    def put(self, key: str, data: bytes) -> str:
        """An object in the case's own part of the bucket; its s3:// URI."""
        key = f"cases/{self.case}/{key}"
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=data)
        return f"s3://{self.bucket}/{key}"

    def put_model(self, skip: tuple[str, ...] = (), replace: dict[str, bytes] | None = None) -> str:
        """The tiny model under the case's prefix, without the files `skip`, with `replace`d files."""
        replace = replace or {}
        for path in self.model_dir.iterdir():
            if path.name not in skip and path.name not in replace:
                self.put(f"model/{path.name}", path.read_bytes())
        for name, data in replace.items():
            self.put(f"model/{name}", data)
        return f"s3://{self.bucket}/cases/{self.case}/model/"

    def proxy(self, fail_paths: tuple[str, ...], fail_with: tuple[int, str]) -> None:
        """Send the job's S3 requests through a proxy that answers `fail_with` on `fail_paths`."""
        proxy = FaultProxy(self.env["AWS_ENDPOINT_URL"], fail_paths=fail_paths, fail_with=fail_with)
        self.proxies.append(proxy)
        self.env["AWS_ENDPOINT_URL"] = proxy.url
        self.env["AWS_MAX_ATTEMPTS"] = "2"  # the errors are permanent: keep botocore's retries short


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    area: str  # settings, data, model, S3, platform
    input: str  # what is wrong, as the table says it
    says: tuple[str, ...]  # what the one error message must contain: the setting or file, and the fix
    settings: dict = dataclasses.field(default_factory=dict)  # FT_ settings changed ("" removes one)
    prepare: Callable[[Run], None] | None = None
    code: int = 64
    needs_mount: bool = False


def csv_rows(rows: list[dict], fields=("text", "label")) -> bytes:
    import csv
    import io

    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(fields), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


ROWS = tiny.sst2_rows("train", 60)


def train_file(name: str, data: bytes) -> Callable[[Run], None]:
    def prepare(run: Run) -> None:
        run.settings["train_data"] = run.put(name, data)

    return prepare


def eval_file(name: str, data: bytes) -> Callable[[Run], None]:
    def prepare(run: Run) -> None:
        run.settings["eval_data"] = run.put(name, data)

    return prepare


def model_with(skip: tuple[str, ...] = (), replace: Callable[[Path], dict[str, bytes]] | None = None):
    def prepare(run: Run) -> None:
        run.settings["model"] = run.put_model(skip, replace(run.model_dir) if replace else None)

    return prepare


def truncated_weights(model_dir: Path) -> dict[str, bytes]:
    data = (model_dir / "model.safetensors").read_bytes()
    return {"model.safetensors": data[: len(data) // 2]}


def pickle_weights(model_dir: Path) -> dict[str, bytes]:
    """The same weights as a pickle (pytorch_model.bin), the way older tools saved models."""
    import io

    import torch
    from safetensors.torch import load_file

    buffer = io.BytesIO()
    torch.save(load_file(str(model_dir / "model.safetensors")), buffer)
    return {"pytorch_model.bin": buffer.getvalue()}


def vision_config(model_dir: Path) -> dict[str, bytes]:
    from transformers import ViTConfig

    return {"config.json": ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2).to_json_string()}


def no_bucket(setting: str) -> Callable[[Run], None]:
    def prepare(run: Run) -> None:
        run.settings[setting] = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/{setting}/"

    return prepare


def data_in_missing_bucket(run: Run) -> None:
    run.settings["train_data"] = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/train.csv"


def denied(path: str, code: tuple[int, str] = (403, "AccessDenied")) -> Callable[[Run], None]:
    def prepare(run: Run) -> None:
        run.proxy((path.format(bucket=run.bucket, case=run.case),), code)

    return prepare


def tensorboard_denied(run: Run) -> None:
    run.settings["report_to"] = "tensorboard"
    run.proxy((f"/{run.bucket}/runs/{run.case}/tensorboard/",), (403, "AccessDenied"))


def work_dir_under_a_file(run: Run) -> None:
    (run.dir / "a-file").write_text("not a folder")
    run.settings["work_dir"] = str(run.dir / "a-file" / "work")


def full_disk(run: Run) -> None:
    """FT_WORK_DIR on a 64 KiB tmpfs: the model does not fit."""
    mount = run.dir / "small-disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], check=True)
    run.mounts.append(mount)
    run.settings["work_dir"] = str(mount / "work")


RAGGED = b"text,label\ngood movie,1\nbad, really bad, movie,0,extra\nfine,1\n"
LATIN1 = "text,label\ncaf\u00e9 au lait,1\nna\u00efve plot,0\n".encode("latin-1")
LISTS = b"".join(json.dumps({"text": r["text"].split(), "label": int(r["label"])}).encode() + b"\n" for r in ROWS)
EMPTY_LABELS = csv_rows([dict(r, label="" if i % 7 == 0 else r["label"]) for i, r in enumerate(ROWS)])
ONE_CLASS = csv_rows([dict(r, label="1") for r in ROWS])
UNSEEN = csv_rows([dict(r, label="2") for r in ROWS[:10]])
NO_LABEL = csv_rows(ROWS, fields=("text",))
MESSY_JSONL = b'{"text": "fine", "label": 1}\n{"text": "broken", "label": \n'
ONE_HUGE_LINE = b"text,label," + b"x," * (5 * 1024 * 1024)  # 10 MB, no line break: a header only


def _cases() -> list[Case]:
    s = "settings"
    return [
        # -- settings --------------------------------------------------------------------------
        Case(
            "unknown-name",
            s,
            "`FT_LERNING_RATE` (a typo)",
            ("FT_LERNING_RATE", "Did you mean FT_LEARNING_RATE?"),
            {"lerning_rate": "1e-4"},
        ),
        Case("wrong-type", s, "`FT_SAVE_STEPS=ten`", ("FT_SAVE_STEPS", "valid number", "'ten'"), {"save_steps": "ten"}),
        Case("not-a-boolean", s, "`FT_FP16=yes please`", ("FT_FP16", "valid boolean"), {"fp16": "yes please"}),
        Case("required-missing", s, "`FT_MODEL` not set", ("FT_MODEL is required",), {"model": ""}),
        Case(
            "zero-batch",
            s,
            "`FT_PER_DEVICE_TRAIN_BATCH_SIZE=0`",
            ("FT_PER_DEVICE_TRAIN_BATCH_SIZE", "greater than 0"),
            {"per_device_train_batch_size": "0"},
        ),
        Case(
            "negative-eval-batch",
            s,
            "`FT_PER_DEVICE_EVAL_BATCH_SIZE=-8`",
            ("FT_PER_DEVICE_EVAL_BATCH_SIZE", "greater than 0"),
            {"per_device_eval_batch_size": "-8"},
        ),
        Case(
            "zero-accumulation",
            s,
            "`FT_GRADIENT_ACCUMULATION_STEPS=0`",
            ("FT_GRADIENT_ACCUMULATION_STEPS", "greater than 0"),
            {"gradient_accumulation_steps": "0"},
        ),
        Case(
            "zero-epochs",
            s,
            "`FT_NUM_TRAIN_EPOCHS=0`",
            ("FT_NUM_TRAIN_EPOCHS", "greater than 0"),
            {"num_train_epochs": "0", "max_steps": ""},
        ),
        Case("zero-max-steps", s, "`FT_MAX_STEPS=0`", ("FT_MAX_STEPS", "greater than 0"), {"max_steps": "0"}),
        Case(
            "negative-learning-rate",
            s,
            "`FT_LEARNING_RATE=-0.001`",
            ("FT_LEARNING_RATE", "greater than or equal to 0"),
            {"learning_rate": "-0.001"},
        ),
        Case("zero-save-steps", s, "`FT_SAVE_STEPS=0`", ("FT_SAVE_STEPS", "greater than 0"), {"save_steps": "0"}),
        Case(
            "zero-logging-steps",
            s,
            "`FT_LOGGING_STEPS=0`",
            ("FT_LOGGING_STEPS", "greater than 0"),
            {"logging_steps": "0"},
        ),
        Case(
            "negative-workers",
            s,
            "`FT_DATALOADER_NUM_WORKERS=-1`",
            ("FT_DATALOADER_NUM_WORKERS", "greater than or equal to 0"),
            {"dataloader_num_workers": "-1"},
        ),
        Case(
            "bad-scheduler",
            s,
            "`FT_LR_SCHEDULER_TYPE=cosinus`",
            ("FT_LR_SCHEDULER_TYPE", "'cosine'"),
            {"lr_scheduler_type": "cosinus"},
        ),
        Case("bad-optimizer", s, "`FT_OPTIM=adamw`", ("FT_OPTIM", "'adamw_torch'"), {"optim": "adamw"}),
        Case(
            "bad-eval-strategy",
            s,
            "`FT_EVAL_STRATEGY=sometimes`",
            ("FT_EVAL_STRATEGY", "'steps'", "'epoch'"),
            {"eval_strategy": "sometimes"},
        ),
        Case("bad-task", s, "`FT_TASK=summarization`", ("FT_TASK", "'seq2seq'"), {"task": "summarization"}),
        Case(
            "split-out-of-range",
            s,
            "`FT_VALIDATION_SPLIT=1.5`",
            ("FT_VALIDATION_SPLIT", "less than 1"),
            {"validation_split": "1.5", "eval_data": ""},
        ),
        Case(
            "eval-data-and-split",
            s,
            "`FT_EVAL_DATA` and `FT_VALIDATION_SPLIT` both set",
            ("FT_VALIDATION_SPLIT and FT_EVAL_DATA are both set", "give one"),
            {"validation_split": "0.2"},
        ),
        Case(
            "best-model-strategies-differ",
            s,
            "`FT_LOAD_BEST_MODEL_AT_END` with `FT_EVAL_STRATEGY=steps`, `FT_SAVE_STRATEGY=epoch`",
            ("FT_LOAD_BEST_MODEL_AT_END", "FT_SAVE_STRATEGY", "FT_EVAL_STRATEGY"),
            {"load_best_model_at_end": "true", "eval_strategy": "steps", "save_strategy": "epoch"},
        ),
        Case(
            "lora-setting-without-lora",
            s,
            "`FT_LORA_ALPHA` without `FT_LORA_R`",
            ("FT_LORA_ALPHA", "set FT_LORA_R"),
            {"lora_alpha": "16"},
        ),
        Case(
            "fp16-on-cpu",
            s,
            "`FT_FP16=true` on a machine without CUDA",
            ("FT_FP16=true needs a CUDA GPU",),
            {"fp16": "true"},
        ),
        Case(
            "jit-checkpoint",
            s,
            "`FT_ENABLE_JIT_CHECKPOINT=true` (refused Trainer field)",
            ("FT_ENABLE_JIT_CHECKPOINT cannot be set", "SIGTERM"),
            {"enable_jit_checkpoint": "true"},
        ),
        Case(
            "save-only-model",
            s,
            "`FT_SAVE_ONLY_MODEL=true` (refused Trainer field)",
            ("FT_SAVE_ONLY_MODEL cannot be set", "optimizer"),
            {"save_only_model": "true"},
        ),
        Case(
            "push-to-hub",
            s,
            "`FT_PUSH_TO_HUB=true` (refused Trainer field)",
            ("FT_PUSH_TO_HUB cannot be set", "FT_OUTPUT_URI"),
            {"push_to_hub": "true"},
        ),
        Case(
            "output-dir",
            s,
            "`FT_OUTPUT_DIR` (set by finetune itself)",
            ("FT_OUTPUT_DIR cannot be set", "FT_OUTPUT_URI"),
            {"output_dir": "/tmp/out"},
        ),
        Case(
            "report-to-not-installed",
            s,
            "`FT_REPORT_TO=clearml` where clearml is not installed",
            ("FT_REPORT_TO=clearml needs the clearml package", "pip install clearml"),
            {"report_to": "clearml"},
        ),
        Case(
            "report-to-unknown",
            s,
            "`FT_REPORT_TO=grafana`",
            ("FT_REPORT_TO", "'tensorboard'"),
            {"report_to": "grafana"},
        ),
        Case(
            "bad-json",
            s,
            '`FT_LR_SCHEDULER_KWARGS={"num_cycles":` (broken JSON)',
            ("FT_LR_SCHEDULER_KWARGS", "JSON"),
            {"lr_scheduler_kwargs": '{"num_cycles":'},
        ),
        Case(
            "config-file-missing",
            s,
            "`FT_ACCELERATOR_CONFIG=/nonexistent/accelerate.json`",
            ("FT_ACCELERATOR_CONFIG", "/nonexistent/accelerate.json", "does not exist"),
            {"accelerator_config": "/nonexistent/accelerate.json"},
        ),
        Case(
            "bad-s3-uri",
            s,
            "`FT_OUTPUT_URI=s3:///runs/` (no bucket)",
            ("FT_OUTPUT_URI", "s3://bucket/prefix"),
            {"output_uri": "s3:///runs/"},
        ),
        Case(
            "bad-bucket-name",
            s,
            "`FT_CHECKPOINT_URI=s3://My_Bucket/ck/`",
            ("FT_CHECKPOINT_URI", "bucket name"),
            {"checkpoint_uri": "s3://My_Bucket/ck/"},
        ),
        # -- data ------------------------------------------------------------------------------
        Case(
            "data-path-missing",
            "data",
            "`FT_TRAIN_DATA` is a local path that does not exist",
            ("FT_TRAIN_DATA", "/nonexistent/train.csv", "does not exist"),
            {"train_data": "/nonexistent/train.csv"},
        ),
        Case(
            "data-key-missing",
            "data",
            "`FT_TRAIN_DATA` names no object on S3",
            ("FT_TRAIN_DATA", "Nothing found"),
            prepare=lambda run: run.settings.update(train_data=f"s3://{run.bucket}/cases/{run.case}/none.csv"),
        ),
        Case(
            "data-empty-file",
            "data",
            "an empty (0-byte) csv",
            ("FT_TRAIN_DATA", "is empty"),
            prepare=train_file("train.csv", b""),
        ),
        Case(
            "data-header-only",
            "data",
            "a csv with a header and no rows",
            ("FT_TRAIN_DATA", "no rows"),
            prepare=train_file("train.csv", b"text,label\n"),
        ),
        Case(
            "data-ragged-csv",
            "data",
            "a csv row with more fields than the header",
            ("FT_TRAIN_DATA", "same number of fields"),
            prepare=train_file("train.csv", RAGGED),
        ),
        Case(
            "data-wrong-encoding",
            "data",
            "a Latin-1 csv",
            ("FT_TRAIN_DATA", "UTF-8"),
            prepare=train_file("train.csv", LATIN1),
        ),
        Case(
            "data-broken-jsonl",
            "data",
            "a jsonl file with a broken line",
            ("FT_TRAIN_DATA", "valid json"),
            prepare=train_file("train.jsonl", MESSY_JSONL),
        ),
        Case(
            "data-corrupt-parquet",
            "data",
            "a corrupt parquet file",
            ("FT_TRAIN_DATA", "valid parquet"),
            prepare=train_file("train.parquet", b"PAR1" + os.urandom(2048) + b"PAR1"),
        ),
        Case(
            "data-one-huge-line",
            "data",
            "a 10 MB csv without a line break",
            ("FT_TRAIN_DATA", "line"),
            prepare=train_file("train.csv", ONE_HUGE_LINE),
        ),
        Case(
            "data-empty-labels",
            "data",
            "rows with an empty label",
            ("FT_TRAIN_DATA", "no value in label column"),
            prepare=train_file("train.csv", EMPTY_LABELS),
        ),
        Case(
            "data-one-class",
            "data",
            "every training label the same",
            ("FT_TRAIN_DATA", "at least two"),
            prepare=train_file("train.csv", ONE_CLASS),
        ),
        Case(
            "data-unseen-eval-labels",
            "data",
            "evaluation labels that training never saw",
            ("FT_EVAL_DATA", "do not occur in the training data"),
            prepare=eval_file("eval.csv", UNSEEN),
        ),
        Case(
            "data-lists-as-text",
            "data",
            "a text column holding lists (jsonl)",
            ("FT_TEXT_COLUMN", "text"),
            prepare=train_file("train.jsonl", LISTS),
        ),
        Case(
            "data-missing-column",
            "data",
            "`FT_TEXT_COLUMN=sentence`, a column the data lacks",
            ("no column 'sentence' (from FT_TEXT_COLUMN)", "Set FT_TEXT_COLUMN"),
            {"text_column": "sentence"},
        ),
        Case(
            "data-eval-missing-label",
            "data",
            "evaluation data without the label column",
            ("FT_EVAL_DATA has no column 'label'",),
            prepare=eval_file("eval.csv", NO_LABEL),
        ),
        Case(
            "data-no-usable-files",
            "data",
            "a prefix holding no csv/jsonl/parquet file",
            ("FT_TRAIN_DATA", "no csv, jsonl, json or parquet file"),
            prepare=lambda run: run.settings.update(train_data=run.put("folder/README.txt", b"hi").rsplit("/", 1)[0]),
        ),
        # -- model -----------------------------------------------------------------------------
        Case(
            "model-missing",
            "model",
            "`FT_MODEL` names an empty S3 prefix",
            ("FT_MODEL", "Nothing found"),
            prepare=lambda run: run.settings.update(model=f"s3://{run.bucket}/cases/{run.case}/nothing/"),
        ),
        Case(
            "flash-attention-here",
            "model",
            "`FT_ATTN_IMPLEMENTATION=flash_attention_2` on a machine without CUDA or flash_attn",
            ("FT_ATTN_IMPLEMENTATION=flash_attention_2", "needs a CUDA GPU", "set it to sdpa"),
            {"attn_implementation": "flash_attention_2"},
        ),
        Case(
            "model-no-config",
            "model",
            "a model folder without config.json",
            ("FT_MODEL", "config.json"),
            prepare=model_with(skip=("config.json",)),
        ),
        Case(
            "model-config-not-json",
            "model",
            "a config.json that is not JSON",
            ("FT_MODEL", "config.json", "JSON"),
            prepare=model_with(replace=lambda _: {"config.json": b"model_type: bert\n"}),
        ),
        Case(
            "model-no-tokenizer",
            "model",
            "a model saved without its tokenizer",
            ("FT_MODEL", "tokenizer.save_pretrained"),
            prepare=model_with(skip=("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")),
        ),
        Case(
            "model-no-weights",
            "model",
            "a model folder without weights",
            ("FT_MODEL", "safetensors"),
            prepare=model_with(skip=("model.safetensors",)),
        ),
        Case(
            "model-corrupt-weights",
            "model",
            "a truncated model.safetensors",
            ("FT_MODEL", "model.safetensors"),
            prepare=model_with(replace=truncated_weights),
        ),
        Case(
            "model-pickle-only",
            "model",
            "weights only as a pickle (pytorch_model.bin): not loaded",
            ("FT_MODEL", "pytorch_model.bin", "safetensors"),
            prepare=model_with(skip=("model.safetensors",), replace=pickle_weights),
        ),
        Case(
            "model-wrong-task",
            "model",
            "a vision model's config for a text task",
            ("FT_MODEL", "sequence-classification", "FT_TASK"),
            prepare=model_with(replace=vision_config),
        ),
        # -- S3 --------------------------------------------------------------------------------
        Case(
            "output-bucket-missing",
            "S3",
            "`FT_OUTPUT_URI` in a bucket that does not exist",
            ("FT_OUTPUT_URI", "does not exist"),
            prepare=no_bucket("output_uri"),
        ),
        Case(
            "checkpoint-bucket-missing",
            "S3",
            "`FT_CHECKPOINT_URI` in a bucket that does not exist",
            ("FT_CHECKPOINT_URI", "does not exist"),
            prepare=no_bucket("checkpoint_uri"),
        ),
        Case(
            "output-access-denied",
            "S3",
            "`FT_OUTPUT_URI` the job may read but not write (AccessDenied)",
            ("FT_OUTPUT_URI", "AccessDenied", "s3:PutObject"),
            prepare=denied("/{bucket}/runs/{case}/"),
        ),
        Case(
            "tensorboard-access-denied",
            "S3",
            "`FT_REPORT_TO=tensorboard`, its location not writable",
            ("TensorBoard", "AccessDenied"),
            prepare=tensorboard_denied,
        ),
        Case(
            "data-access-denied",
            "S3",
            "`FT_TRAIN_DATA` the job may not read (AccessDenied)",
            ("FT_TRAIN_DATA", "AccessDenied"),
            prepare=denied("/{bucket}/data/"),
        ),
        Case(
            "model-access-denied",
            "S3",
            "`FT_MODEL` the job may not read (AccessDenied)",
            ("FT_MODEL", "AccessDenied"),
            prepare=denied("/{bucket}/models/"),
        ),
        Case(
            "data-bucket-missing",
            "S3",
            "`FT_TRAIN_DATA` in a bucket that does not exist",
            ("FT_TRAIN_DATA", "does not exist"),
            prepare=data_in_missing_bucket,
        ),
        Case(
            "expired-credentials",
            "S3",
            "expired AWS credentials (ExpiredToken)",
            ("ExpiredToken", "credentials"),
            prepare=denied("/", (400, "ExpiredToken")),
        ),
        Case(
            "unknown-access-key",
            "S3",
            "an unknown access key (InvalidAccessKeyId)",
            ("InvalidAccessKeyId", "credentials"),
            prepare=denied("/", (403, "InvalidAccessKeyId")),
        ),
        Case(
            "wrong-region",
            "S3",
            "a bucket in another region (PermanentRedirect)",
            ("region", "AWS_REGION"),
            prepare=denied("/{bucket}/runs/", (301, "PermanentRedirect")),
        ),
        # -- platform --------------------------------------------------------------------------
        Case(
            "work-dir-not-a-folder",
            "platform",
            "`FT_WORK_DIR` under a regular file",
            ("FT_WORK_DIR", "writable"),
            prepare=work_dir_under_a_file,
        ),
        Case(
            "work-dir-unwritable",
            "platform",
            "`FT_WORK_DIR=/proc/finetune` (not writable)",
            ("FT_WORK_DIR", "writable"),
            {"work_dir": "/proc/finetune"},
        ),
        Case(
            "output-folder-unwritable",
            "platform",
            "`FT_OUTPUT_URI=/proc/finetune-output` (a local folder)",
            ("FT_OUTPUT_URI", "/proc/finetune-output"),
            {"output_uri": "/proc/finetune-output"},
        ),
        Case(
            "disk-full",
            "platform",
            "`FT_WORK_DIR` on a disk too small for the model (a 64 KiB tmpfs)",
            ("FT_WORK_DIR", "space"),
            prepare=full_disk,
            needs_mount=True,
        ),
    ]


CASES = _cases()


def can_mount_tmpfs() -> bool:
    """Root with the right to mount (a tmpfs is the honest full disk)."""
    if os.geteuid() != 0:
        return False
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", folder], capture_output=True)
        if mounted.returncode != 0:
            return False
        subprocess.run(["umount", folder], check=True)
    return True


CAN_MOUNT = can_mount_tmpfs()


def markdown_table() -> str:
    rows = [
        "| # | area | bad input | exit | the message says |",
        "|---|---|---|---|---|",
    ]
    for n, case in enumerate(CASES, 1):
        says = " … ".join(f"`{s}`" for s in case.says)
        rows.append(f"| {n} | {case.area} | {case.input} | {case.code} | {says} |")
    return "\n".join(rows)


@pytest.fixture(scope="module")
def catalogue(moto_server, tiny_assets, tmp_path_factory):
    """A bucket with the tiny model and data, and the warm fork server the cases run in."""
    aws = dict(AWS_TEST_ENV, AWS_ENDPOINT_URL=moto_server)
    s3 = boto3.client(
        "s3",
        endpoint_url=moto_server,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    for path in (tiny_assets / "model").iterdir():
        s3.upload_file(str(path), bucket, f"models/tiny/{path.name}")
    s3.put_object(Bucket=bucket, Key="data/train.csv", Body=csv_rows(ROWS[:48]))
    s3.put_object(Bucket=bucket, Key="data/eval.csv", Body=csv_rows(ROWS[48:]))
    root = tmp_path_factory.mktemp("bad-inputs")
    forker = Forker(jobs.child_env(aws), root)
    try:
        yield {
            "aws": aws,
            "s3": s3,
            "bucket": bucket,
            "forker": forker,
            "root": root,
            "model_dir": tiny_assets / "model",
        }
    finally:
        forker.close()


def new_run(catalogue, case_id: str) -> Run:
    bucket = catalogue["bucket"]
    folder = catalogue["root"] / case_id
    folder.mkdir()
    settings = {
        "model": f"s3://{bucket}/models/tiny/",
        "train_data": f"s3://{bucket}/data/train.csv",
        "eval_data": f"s3://{bucket}/data/eval.csv",
        "output_uri": f"s3://{bucket}/runs/{case_id}/",
        "work_dir": str(folder / "work"),
        "max_steps": "2",
        "per_device_train_batch_size": "4",
        "logging_steps": "1",
        "seed": "7",
    }
    return Run(case_id, bucket, folder, catalogue["s3"], catalogue["model_dir"], settings, dict(catalogue["aws"]))


def run_job(catalogue, run: Run):
    settings = {k: v for k, v in run.settings.items() if v != ""}
    env = jobs.child_env(run.env, **settings)
    try:
        return catalogue["forker"].run(env, run.dir)
    finally:
        for proxy in run.proxies:
            proxy.close()
        for mount in run.mounts:
            subprocess.run(["umount", str(mount)], check=True)


def error_message(stderr: str) -> tuple[int, str]:
    """How many error records the log holds, and the text from the first one on."""
    lines = stderr.splitlines()
    starts = [i for i, line in enumerate(lines) if " ERROR " in line]
    return len(starts), "\n".join(lines[starts[0] :]) if starts else ""


def test_the_baseline_trains(catalogue):
    """Every case is this job with one thing wrong: it must work as it is."""
    run = new_run(catalogue, "baseline")
    rc, out, err, _ = run_job(catalogue, run)
    assert rc == 0, (out + err)[-3000:]
    assert "[metrics] step=2 " in out
    listed = catalogue["s3"].list_objects_v2(Bucket=run.bucket, Prefix="runs/baseline/")
    assert any(o["Key"].endswith("metrics.json") for o in listed.get("Contents", []))


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(c, id=c.id, marks=[pytest.mark.skipif(not CAN_MOUNT, reason="needs root and mount")])
        if c.needs_mount
        else pytest.param(c, id=c.id)
        for c in CASES
    ],
)
def test_bad_input_is_refused_before_training_with_one_clear_message(catalogue, case):
    run = new_run(catalogue, case.id)
    run.settings.update(case.settings)
    if case.prepare:
        case.prepare(run)
    rc, out, err, seconds = run_job(catalogue, run)
    records, message = error_message(err)
    assert rc == case.code, f"exit {rc}, expected {case.code}\n{(out + err)[-3000:]}"
    assert "Traceback" not in out + err, (out + err)[-3000:]
    assert records == 1, f"{records} error records, expected one:\n{err[-3000:]}"
    if "problem(s) in the settings" in message:
        assert ": 1 problem(s) in the settings" in message, message
    for fragment in case.says:
        assert fragment in message, f"{fragment!r} not in the message:\n{message}"
    assert "[metrics] step=" not in out, "training started"
    listed = catalogue["s3"].list_objects_v2(Bucket=run.bucket, Prefix=f"runs/{case.id}/")
    assert listed.get("KeyCount", 0) == 0, f"written at the output location: {listed.get('Contents')}"
    output = run.settings.get("output_uri", "")
    if output.startswith("/") and Path(output).exists():
        assert not any(p.is_file() for p in Path(output).rglob("*")), f"files written under {output}"
    assert seconds < 60, f"took {seconds} s: it should end before training, in seconds"


def test_the_catalogue_is_big_enough_and_its_ids_unique():
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)


def test_docs_list_every_case():
    lines = set(PAGE.read_text().splitlines())
    missing = [line for line in markdown_table().splitlines() if line not in lines]
    assert not missing, (
        "docs/bad-inputs.md lacks (regenerate with `python -m tests.integration.test_bad_inputs`):\n"
        + "\n".join(missing)
    )


if __name__ == "__main__":
    print(markdown_table())
