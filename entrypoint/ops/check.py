"""`finetune check`: the job's first stages without training, on a laptop or in CI, before paying
for a GPU. From the same settings as `finetune train`: every setting problem; read access to the
model (config and tokenizer; weights are listed, not downloaded) and the data; write access to
every location the job writes to; the data's columns, labels and token lengths; the planned
steps; the checkpoint's size and the time to make it durable against the spot notice; and an
existing run at the checkpoint location. Exit codes are the job's: 64 for the user's mistakes, 75
for the world's, 0 when the job can start.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from entrypoint.errors import ExitCode, FinetuneError, UserError, WorldError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".ckpt", ".onnx")
SPOT_NOTICE_S = 120  # EC2's spot interruption notice; SageMaker gives the same after StopTrainingJob
PROBE_BYTES = 8 * 1024 * 1024
SAMPLE_ROWS = 2000


@dataclasses.dataclass
class Finding:
    check: str
    status: str  # "ok", "warn" or "fail"
    detail: str
    data: dict = dataclasses.field(default_factory=dict)


def percentiles(lengths: list[int], limit: int) -> dict[str, float]:
    """Token-length percentiles and the share of rows longer than `limit` (pure)."""
    if not lengths:
        return {}
    ordered = sorted(lengths)

    def at(q: float) -> int:
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]

    truncated = sum(1 for n in lengths if n > limit) / len(lengths)
    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": ordered[-1], "truncated_share": round(truncated, 4)}


def planned_steps(rows: int, per_device: int, processes: int, accumulation: int, epochs: float, max_steps: int) -> dict:
    """Optimizer steps per epoch and in all, as the Trainer counts them (pure)."""
    batches = math.ceil(rows / max(1, per_device * processes))
    per_epoch = max(1, batches // max(1, accumulation))
    total = max_steps if max_steps > 0 else math.ceil(epochs * per_epoch)
    return {"steps_per_epoch": per_epoch, "total_steps": total, "epochs": round(total / per_epoch, 2)}


def checkpoint_bytes(weight_bytes: int, lora: bool) -> int:
    """A checkpoint's size: fp32 weights and Adam's two moments (what a MiniLM checkpoint measures:
    91 MB of weights, 261 MB in all); with LoRA only the adapter and its optimizer state, estimated
    generously at 2 % of the weights."""
    return int(weight_bytes * (0.02 if lora else 3))


class Preflight:
    """The checks, in the job's order; each adds a Finding, a failure ends the dependent ones."""

    def __init__(self, environ: Mapping[str, str]):
        self.environ = environ
        self.findings: list[Finding] = []
        self.code = ExitCode.OK
        self.work = Path(tempfile.mkdtemp(prefix="finetune-check-"))

    def add(self, check: str, status: str, detail: str, **data: Any) -> None:
        self.findings.append(Finding(check, status, detail, data))

    def step(self, check: str, fn: Callable[[], Any]) -> Any:
        """fn() or None after recording its failure (the user's: 64; the world's: 75)."""
        try:
            return fn()
        except FinetuneError as exc:
            self.add(check, "fail", str(exc))
            world = isinstance(exc, WorldError)
            code = ExitCode.WORLD_ERROR if world else ExitCode.USER_ERROR
            self.code = code if self.code == ExitCode.OK or code == ExitCode.USER_ERROR else self.code
            return None

    def run(self) -> list[Finding]:
        from entrypoint.__main__ import load_settings

        loaded = self.step("settings", lambda: load_settings(self.environ))
        if loaded is None:
            return self.findings
        self.runtime, self.settings = loaded
        self.add("settings", "ok", f"valid; platform {self.runtime.describe()}; task {self.settings.task}")
        from entrypoint import tasks
        from entrypoint.job import training

        self.task = tasks.get(self.settings.task)
        self.args = self.step(
            "Trainer arguments", lambda: training.arguments_for(self.settings, self.task, self.work / "ckpt")
        )
        if self.args is None:
            return self.findings
        self.step("write access", self.check_writes)
        rate = self.step("upload rate", self.measure_upload)
        model = self.step("model", self.check_model)
        data = self.step("data", self.check_data) if model is not None else None
        if model is not None and data is not None:
            self.step("token lengths", lambda: self.check_lengths(model[0], data))
            self.step("plan", lambda: self.check_plan(data))
        if model is not None:
            self.step("checkpoint", lambda: self.check_checkpoint(model[1], rate))
        self.step("existing run", self.check_existing_run)
        return self.findings

    def check_writes(self) -> None:
        from entrypoint.config import settings as config
        from entrypoint.io import storage

        locations = config.write_locations(self.settings, self.runtime, self.args.report_to)
        storage.check_writable(locations)
        self.add(
            "write access", "ok", "can write to " + ", ".join(f"{k.split(' ')[0]}={v}" for k, v in locations.items())
        )

    def measure_upload(self) -> float | None:
        """MB/s of one probe upload to the checkpoint location (removed), for the durable-time estimate."""
        from entrypoint.config import settings as config
        from entrypoint.io import storage

        uri = config.checkpoint_uri(self.settings)
        if not storage.is_s3(uri):
            self.add("upload rate", "ok", f"{uri} is a local folder: no upload")
            return None
        store = storage.open_store(uri, self.settings.transfer_concurrency)
        probe = self.work / "probe.bin"
        probe.write_bytes(b"\0" * PROBE_BYTES)
        key = f"_check/{uuid.uuid4().hex}.bin"
        started = time.monotonic()
        store.upload_file(probe, key)
        seconds = max(time.monotonic() - started, 1e-3)
        store.delete([key])
        rate = PROBE_BYTES / 1e6 / seconds
        self.add("upload rate", "ok", f"{rate:.0f} MB/s to {uri} (one {PROBE_BYTES >> 20} MB probe)", mb_per_s=rate)
        return rate

    def check_model(self) -> tuple[Any, int]:
        """(tokenizer, weight bytes): config and tokenizer fetched and loaded, weights only listed."""
        from entrypoint.job import modeling

        folder, weights = model_metadata(self.settings.model, self.work / "model", self.settings.transfer_concurrency)
        modeling.check_config(folder, self.settings)
        tokenizer = modeling.load_tokenizer(folder, self.settings.model)
        if not weights:
            raise UserError(f"FT_MODEL: {self.settings.model} holds no weights (no *.safetensors file).")
        size = sum(weights.values())
        self.add(
            "model",
            "ok",
            f"{self.settings.model}: config and tokenizer load for {self.settings.task}; "
            f"weights {size / 1e6:.0f} MB in {len(weights)} file(s)",
            weight_bytes=size,
        )
        return tokenizer, size

    def check_data(self):
        from entrypoint.io import hub
        from entrypoint.job import data

        settings = self.settings
        for setting, uri in (("FT_TRAIN_DATA", settings.train_data), ("FT_EVAL_DATA", settings.eval_data)):
            if uri and hub.is_hub_data(uri):
                raise UserError(f"{setting}: `finetune check` reads S3 and local data; {uri} is checked by the job")
        splits = data.load_splits(settings, self.work, self.task.columns(settings))
        prepared = self.task.prepare(splits, settings)
        info: dict[str, Any] = {"train_rows": len(splits.train), "eval_rows": len(splits.eval) if splits.eval else 0}
        detail = f"{info['train_rows']} training rows, {info['eval_rows']} evaluation rows"
        if settings.task == "sequence-classification":
            counts = Counter(str(v) for v in splits.train[settings.label_column])
            info["labels"] = dict(sorted(counts.items()))
            detail += "; labels " + ", ".join(f"{k} ({v})" for k, v in info["labels"].items())
        dropped = len(splits.train) - len(prepared.train)
        if dropped > 0:
            detail += f"; {dropped} rows dropped by preparation"
        info["rows_dropped"] = max(dropped, 0)
        self.add("data", "ok", detail, **info)
        return prepared

    def check_lengths(self, tokenizer, prepared) -> None:
        from entrypoint.job import preprocess

        texts = sample_texts(prepared.train, self.task.columns(self.settings), SAMPLE_ROWS)
        if not texts:
            self.add("token lengths", "ok", "no text column to measure for this task")
            return
        limit = preprocess.max_length(tokenizer, self.settings.max_length)
        lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]]
        stats = percentiles(lengths, limit)
        status = "warn" if stats["truncated_share"] > 0.05 else "ok"
        self.add(
            "token lengths",
            status,
            f"p50 {stats['p50']}, p90 {stats['p90']}, p99 {stats['p99']}, max {stats['max']} tokens over {len(texts)} "
            f"rows; {stats['truncated_share']:.1%} longer than FT_MAX_LENGTH={limit} (truncated)",
            max_length=limit,
            **stats,
        )

    def check_plan(self, prepared) -> None:
        args = self.args
        processes = self.settings.num_processes or 1
        plan = planned_steps(
            len(prepared.train),
            args.per_device_train_batch_size,
            processes,
            args.gradient_accumulation_steps,
            args.num_train_epochs,
            args.max_steps,
        )
        self.add(
            "plan",
            "ok",
            f"{plan['total_steps']} optimizer steps ({plan['epochs']} epochs of {plan['steps_per_epoch']}) with "
            f"{processes} process(es) x batch {args.per_device_train_batch_size} x accumulation "
            f"{args.gradient_accumulation_steps}",
            processes=processes,
            **plan,
        )

    def check_checkpoint(self, weight_bytes: int, rate: float | None) -> None:
        size = checkpoint_bytes(weight_bytes, self.settings.lora_r is not None)
        window = self.settings.stop_grace_seconds or SPOT_NOTICE_S
        if rate is None:
            self.add("checkpoint", "ok", f"about {size / 1e6:.0f} MB; local checkpoints", checkpoint_bytes=size)
            return
        seconds = size / 1e6 / rate
        over = seconds > 0.8 * window
        detail = (
            f"about {size / 1e6:.0f} MB, durable in about {seconds:.0f} s at {rate:.0f} MB/s: "
            f"{'MORE than' if over else 'within'} the {window:.0f} s stop window"
        )
        if over:
            detail += (
                "; a stop checkpoint may not become durable before the kill. Use LoRA (FT_LORA_R), a faster link, or "
                "a longer FT_STOP_GRACE_SECONDS where the platform allows it"
            )
        self.add("checkpoint", "warn" if over else "ok", detail, checkpoint_bytes=size, durable_s=round(seconds, 1))

    def check_existing_run(self) -> None:
        from entrypoint.config import settings as config
        from entrypoint.ops import status

        found = status.summarize(
            status.read_run(config.checkpoint_uri(self.settings), self.settings.output_uri), time.time()
        )
        if found["state"] == "not started":
            self.add("existing run", "ok", "none at the checkpoint location: the job starts from the base model")
            return
        self.add(
            "existing run",
            "warn" if found["state"] == "finished" else "ok",
            f"{found['state']} at {found['checkpoint_uri']}: {len(found['attempts'])} attempt(s), durable step "
            f"{found['durable_step']} of {found['planned_steps']}"
            + ("; the job will resume it" if found["state"] != "finished" else "; a new job would publish over it"),
            state=found["state"],
            durable_step=found["durable_step"],
        )


def sample_texts(ds, columns: Mapping[str, str | None], limit: int) -> list[str]:
    """Up to `limit` rows of the task's text columns (pairs joined), as the tokenizer sees them."""
    names = [c for c in columns.values() if c and c in ds.column_names]
    rows = ds.select(range(min(limit, len(ds))))
    texts = []
    for row in rows:
        parts = [row[c] for c in names if isinstance(row[c], str)]
        if parts:
            texts.append(" ".join(parts))
    return texts


def model_metadata(uri: str, dest: Path, concurrency: int) -> tuple[Path, dict[str, int]]:
    """A folder with FT_MODEL's config and tokenizer files, and {weight file: bytes} (not downloaded)."""
    from entrypoint.io import hub, storage

    def split(files: Mapping[str, int]) -> tuple[list[str], dict[str, int]]:
        weights = {f: n for f, n in files.items() if f.endswith(WEIGHT_SUFFIXES) and "/" not in f}
        light = [f for f in files if not f.endswith(WEIGHT_SUFFIXES) and "/" not in f]
        return light, weights

    if storage.is_s3(uri):
        store = storage.open_store(storage.as_prefix(uri), concurrency)
        light, weights = split(store.list())
        storage.download_many(store, light, dest, concurrency=concurrency)
        return dest, weights
    local = Path(uri).expanduser()
    if local.is_dir():
        return local, split({p.name: p.stat().st_size for p in local.iterdir() if p.is_file()})[1]
    if hub.model_source(uri, lambda _: False) != "hub":
        raise UserError(f"FT_MODEL: {uri} does not exist.")
    snapshot = hub.resolve(hub.parse_model(uri), "FT_MODEL")
    light, weights = split(snapshot.files)
    return hub.download(snapshot, light, dest, "FT_MODEL"), weights


def render(findings: list[Finding]) -> str:
    marks = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}
    width = max((len(f.check) for f in findings), default=10)
    return "\n".join(f"{marks[f.status]}  {f.check:<{width}}  {f.detail}" for f in findings)


def main(argv: list[str], environ: Mapping[str, str]) -> int:
    """`finetune check [--json] [--strict]`."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="finetune check", description="Check a job's settings, inputs and outputs without training."
    )
    parser.add_argument("--json", action="store_true", help="as JSON, for CI")
    parser.add_argument("--strict", action="store_true", help="warnings fail too (exit 64)")
    args = parser.parse_args(argv)
    preflight = Preflight(environ)
    findings = preflight.run()
    code = preflight.code
    if code == ExitCode.OK and args.strict and any(f.status == "warn" for f in findings):
        code = ExitCode.USER_ERROR
    if args.json:
        print(json.dumps({"exit_code": int(code), "findings": [dataclasses.asdict(f) for f in findings]}, indent=2))
    else:
        print(render(findings))
    return int(code)
