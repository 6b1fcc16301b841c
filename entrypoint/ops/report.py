"""report.html: a run at a glance, for people. The curves of every attempt on one step axis with
the interruptions marked, throughput, the preemption figures, the model, the data and the
settings (secrets redacted), in one self-contained page that opens from a file with no network.

What it shows is read from what the job wrote (`status.read_run`: attempts, checkpoints, the
newest `trainer_state.json`, metrics.json) and from one record per attempt under `_report/` at
the checkpoint location (where the attempt resumed, its settings, redacted before they are
written). `build` turns that into plain data and `report_html.render` into the page, both pure;
`publish` (the job) and `main` (`finetune report`) are the effects."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from entrypoint.io import storage
from entrypoint.ops import report_html, status
from entrypoint.ops.report_html import redact

REPORT_FILE = "report.html"
RECORDS = "_report/"  # at the checkpoint location: <attempt>.json, one per attempt
INPUTS = ("FT_TASK", "FT_MODEL", "FT_TRAIN_DATA", "FT_EVAL_DATA", "FT_VALIDATION_SPLIT")
# Logged numbers that are not curves: counters, and the speeds that the throughput section shows.
NOT_CURVES = {"step", "epoch", "total_flos", "train_loss", "num_input_tokens_seen"}


def attempt_record(attempt: int, resumed_from_step: int | None, settings: Mapping[str, Any], now_unix: float) -> dict:
    """What an attempt writes under `_report/` when it starts training (its settings redacted)."""
    return {
        "attempt": attempt,
        "resumed_from_step": resumed_from_step,
        "settings": redact(settings),
        "written_unix": now_unix,
    }


def curves(log_history: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """{name: [(step, value), ...]} of the numbers the Trainer logged: training (loss,
    learning_rate, grad_norm) and evaluation (eval_*); the last value logged at a step wins."""
    found: dict[str, dict[int, float]] = {}
    for entry in log_history:
        step = entry.get("step")
        if not isinstance(step, int) or "train_runtime" in entry:  # the end-of-training summary: speeds
            continue
        for key, value in entry.items():
            if key in NOT_CURVES or key.endswith(("_runtime", "_per_second")):
                continue
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                found.setdefault(key, {})[step] = float(value)
    return {name: sorted(points.items()) for name, points in sorted(found.items())}


def throughput(log_history: list[dict], summary: dict) -> dict[str, float | None]:
    """Speeds as the Trainer reported them (its end-of-training summary, the last evaluation) and
    the rate between the newest attempt's durable checkpoints."""
    train = next((e for e in reversed(log_history) if "train_runtime" in e), {})
    evaluation = next((e for e in reversed(log_history) if "eval_runtime" in e), {})
    return {
        "train_steps_per_second": train.get("train_steps_per_second"),
        "train_samples_per_second": train.get("train_samples_per_second"),
        "train_runtime_s": train.get("train_runtime"),
        "eval_samples_per_second": evaluation.get("eval_samples_per_second"),
        "checkpoint_steps_per_second": summary.get("steps_per_second"),
    }


def attempts_on_the_step_axis(
    run: status.RunFiles, rows: list[dict], records: Mapping[int, dict], last_step: int
) -> tuple[list[dict], list[dict]]:
    """(each attempt's row with the steps it trained, from_step and to_step; the interruptions: where
    an attempt ended early, and where the next one resumed)."""
    numbers = [row["attempt"] for row in rows]
    start = {n: (records[n].get("resumed_from_step") or 0) if n in records else None for n in numbers}
    if numbers and run.metrics and start[numbers[-1]] is None:  # no record: metrics.json tells the last one's
        start[numbers[-1]] = run.metrics.get("resumed_from_step") or 0
    if numbers and start[numbers[0]] is None:
        start[numbers[0]] = 0
    durable = {}
    for c in run.checkpoints:
        if c.complete:
            durable[c.generation] = max(durable.get(c.generation, 0), c.step)
    spans, interruptions = [], []
    for i, row in enumerate(rows):
        n, following = row["attempt"], rows[i + 1 :]
        ending = run.endings.get(n) or {}
        nxt = next((r["attempt"] for r in following if start[r["attempt"]] is not None), None)
        end = start[nxt] if nxt is not None else (durable.get(n) if following else last_step)
        extra = {k: ending.get(k) for k in ("start_to_first_step_s", "upload_mb_per_s") if ending.get(k) is not None}
        if row["outcome"] == "finished" and run.metrics:
            extra = {k: run.metrics.get(k) for k in ("start_to_first_step_s", "upload_mb_per_s")}
        spans.append(dict(row, from_step=start[n], to_step=end, **extra))
        if row["outcome"] in ("finished", "running or killed") or end is None:
            continue
        label = f"attempt {n} {row['outcome'].replace(' (no ending recorded)', '')} at step {end}"
        if nxt is not None:
            label += f"; attempt {nxt} resumed from step {start[nxt]}"
        if row["steps_lost"] is not None:
            label += f"; {row['steps_lost']} step(s) lost"
        if row["notice_to_durable_s"] is not None:
            label += f"; {row['notice_to_durable_s']} s from notice to durable"
        interruptions.append(
            {
                "attempt": n,
                "step": end,
                "outcome": row["outcome"],
                "resumed_by": nxt,
                "steps_lost": row["steps_lost"],
                "notice_to_durable_s": row["notice_to_durable_s"],
                "label": label,
            }
        )
    return spans, interruptions


def build(run: status.RunFiles, records: Mapping[int, dict], now_unix: float) -> dict:
    """The report's content as plain data (pure): what `report_html.render` draws."""
    summary = status.summarize(run, now_unix)
    state = run.trainer_state or {}
    history = [e for e in state.get("log_history") or [] if isinstance(e, dict)]
    series = curves(history)
    logged = [step for points in series.values() for step, _ in points]
    last_step = max([state.get("global_step") or 0, summary["durable_step"] or 0, *logged])
    spans, interruptions = attempts_on_the_step_axis(run, summary["attempts"], records, last_step)
    newest = records[max(records)] if records else {}
    settings = redact(newest.get("settings") or {})
    return {
        "title": run.output_uri or run.checkpoint_uri,
        "summary": summary,
        "curves": series,
        "attempts": spans,
        "interruptions": interruptions,
        "throughput": throughput(history, summary),
        "last_step": last_step,
        "inputs": {name: settings.get(name) for name in INPUTS if settings.get(name) is not None},
        "settings": settings,
        "settings_from_attempt": newest.get("attempt"),
    }


def read_records(store: storage.Store) -> dict[int, dict]:
    """{attempt: its record} from `_report/` (unreadable ones are skipped)."""
    out = {}
    for key in sorted(store.list(RECORDS)):
        stem = key[len(RECORDS) :].removesuffix(".json")
        if stem.isdigit():
            try:
                record = json.loads(store.read_bytes(key) or b"null")
            except ValueError:
                continue
            if isinstance(record, dict):
                out[int(stem)] = record
    return out


def write_record(store: storage.Store, record: dict) -> None:
    store.write_bytes(f"{RECORDS}{record['attempt']:06d}.json", json.dumps(record, indent=1, default=str).encode())


def read(uri: str, output_uri: str | None = None) -> tuple[status.RunFiles, dict[int, dict]]:
    run = status.read_run(uri, output_uri)
    return run, read_records(storage.open_store(run.checkpoint_uri))


def publish(
    checkpoint_uri: str,
    output_uri: str,
    final_state: dict | None = None,
    final_metrics: dict | None = None,
    concurrency: int = 8,
    to_uri: str | None = None,
) -> str:
    """Rebuild report.html at `to_uri` (default: `output_uri`) from what the job wrote so far; at the
    end of the job its final state (log history) and metrics, not written yet, are given. Returns
    where it went."""
    run, records = read(checkpoint_uri, output_uri)
    if final_state is not None:
        run = dataclasses.replace(run, trainer_state=final_state)
    if final_metrics is not None:
        run = dataclasses.replace(run, metrics=final_metrics)
    store = storage.open_store(to_uri or output_uri, concurrency)
    store.write_bytes(REPORT_FILE, report_html.render(build(run, records, time.time())).encode())
    return store.uri + REPORT_FILE


def main(argv: list[str]) -> int:
    """`finetune report URI [--output URI] [--out FILE]`."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="finetune report", description="Build a run's report.html from what the job wrote (also mid-run)."
    )
    parser.add_argument(
        "uri", help="the run's checkpoint location (FT_CHECKPOINT_URI) or output location (FT_OUTPUT_URI)"
    )
    parser.add_argument("--output", help="the output location, when it is not the parent of the checkpoints")
    parser.add_argument(
        "--out", default=REPORT_FILE, help="where to write it: a file or s3:// URI (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    run, records = read(args.uri, args.output)
    data = build(run, records, time.time())
    if storage.is_s3(args.out):
        folder, _, name = args.out.rpartition("/")
    else:
        path = Path(args.out).expanduser().absolute()
        folder, name = str(path.parent), path.name
    storage.open_store(folder).write_bytes(name, report_html.render(data).encode())
    summary = data["summary"]
    attempts, interruptions = len(data["attempts"]), summary["interruptions"]
    print(f"{args.out}: {summary['state']}, {attempts} attempt(s), {interruptions} interruption(s)")
    return 0
