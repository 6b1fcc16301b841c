"""`finetune status URI`: where a run stands, read from what the job wrote at its checkpoint and
output locations (and, given a job id, from the platform). Reading is `read_run`; everything
after that is `summarize`, a pure function of what was read and the time."""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Mapping
from typing import Any

from entrypoint.durability import attempts, checkpoints, manifests
from entrypoint.io import storage

TRAINER_STATE = "trainer_state.json"
METRICS_FILE = "metrics.json"


@dataclasses.dataclass(frozen=True)
class RunFiles:
    """What the job wrote, as read from the store (no interpretation)."""

    checkpoint_uri: str
    output_uri: str | None
    claims: dict[int, dict]  # attempt number -> its claim (label, started_unix)
    endings: dict[int, dict]  # attempt number -> how it ended (outcome, preemption figures)
    checkpoints: list[manifests.Checkpoint]  # newest first
    trainer_state: dict | None  # of the newest complete checkpoint
    metrics: dict | None  # metrics.json at the output location: the run finished


def locations(uri: str) -> tuple[str, str | None]:
    """(checkpoint location, output location or None) for a URI that names either: an output
    location holds `checkpoints/` (the default layout); anything else is taken as the checkpoint
    location itself."""
    base = storage.as_prefix(uri) if storage.is_s3(uri) else uri.rstrip("/") + "/"
    store = storage.open_store(base)
    if store.list(attempts.ATTEMPTS):
        return base, None
    if store.list("checkpoints/" + attempts.ATTEMPTS):
        return base + "checkpoints/", base
    return base, base  # nothing yet at either: report an empty run


def _json(raw: bytes | None) -> dict | None:
    try:
        value = json.loads(raw) if raw else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def read_run(uri: str, output_uri: str | None = None) -> RunFiles:
    checkpoint_uri, found_output = locations(uri)
    output_uri = output_uri or found_output
    store = storage.open_store(checkpoint_uri)
    claims: dict[int, dict] = {}
    endings: dict[int, dict] = {}
    for key in sorted(store.list(attempts.ATTEMPTS)):
        name = key[len(attempts.ATTEMPTS) :]
        number = name.split(".", 1)[0]
        if not number.isdigit():
            continue
        record = _json(store.read_bytes(key)) or {}
        (endings if name.endswith(".end.json") else claims)[int(number)] = record
    found = checkpoints.scan(store)
    newest = manifests.latest_complete(found)
    state = _json(store.read_bytes(f"{newest.name}/{TRAINER_STATE}")) if newest else None
    metrics = _json(storage.open_store(output_uri).read_bytes(METRICS_FILE)) if output_uri else None
    return RunFiles(checkpoint_uri, output_uri, claims, endings, found, state, metrics)


def _when(unix: float | None) -> str | None:
    if unix is None:
        return None
    return datetime.datetime.fromtimestamp(unix, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def steps_per_second(complete: list[manifests.Checkpoint]) -> float | None:
    """The training rate from the newest attempt's checkpoints (step and manifest time of each)."""
    if not complete:
        return None
    generation = complete[0].generation
    points = sorted(
        (c.step, c.manifest["created_unix"])
        for c in complete
        if c.generation == generation and c.manifest and "created_unix" in c.manifest
    )
    if len(points) < 2 or points[-1][1] <= points[0][1]:
        return None
    return (points[-1][0] - points[0][0]) / (points[-1][1] - points[0][1])


def summarize(run: RunFiles, now_unix: float, platform: Mapping[str, Any] | None = None) -> dict:
    """Where the run stands (pure)."""
    complete = [c for c in run.checkpoints if c.complete]
    newest = complete[0] if complete else None
    state = run.trainer_state or {}
    planned = run.metrics.get("global_step") if run.metrics else state.get("max_steps")
    durable = newest.step if newest else None
    rate = steps_per_second(complete)
    finished = run.metrics is not None
    remaining = (planned - durable) if planned and durable is not None else None
    eta = round(remaining / rate) if rate and remaining is not None and not finished else None
    rows = []
    for number in sorted(set(run.claims) | set(run.endings)):
        claim, ending = run.claims.get(number, {}), run.endings.get(number)
        if ending:
            outcome = ending.get("outcome", "ended")
        elif finished and number == max(run.claims, default=0):
            outcome = "finished"
        elif number == max(run.claims, default=0):
            outcome = "running or killed"  # a killed attempt records nothing; its successor tells
        else:
            outcome = "killed (no ending recorded)"
        rows.append(
            {
                "attempt": number,
                "started": _when(claim.get("started_unix")),
                "where": claim.get("label"),
                "outcome": outcome,
                "steps_lost": (ending or {}).get("steps_lost"),
                "notice_to_durable_s": (ending or {}).get("notice_to_durable_s"),
            }
        )
    interrupted = [r for r in rows if r["outcome"] == "interrupted"]
    return {
        "checkpoint_uri": run.checkpoint_uri,
        "output_uri": run.output_uri,
        "state": "finished" if finished else ("not started" if not rows else "in progress"),
        "attempts": rows,
        "interruptions": len(interrupted),
        "steps_lost": sum(int(r["steps_lost"] or 0) for r in interrupted),
        "durable_step": durable,
        "planned_steps": planned,
        "percent_done": round(100 * durable / planned, 1) if planned and durable is not None else None,
        "steps_per_second": round(rate, 4) if rate else None,
        "eta_s": eta,
        "checkpoints": [
            {"name": c.name, "step": c.step, "attempt": c.generation, "complete": c.complete} for c in run.checkpoints
        ],
        "final_metrics": run.metrics,
        "platform": dict(platform) if platform else None,
        "as_of": _when(now_unix),
    }


def render(status: dict) -> str:
    """The summary as a few aligned lines for people."""
    lines = [
        f"run        {status['state']} (as of {status['as_of']})",
        f"checkpoints {status['checkpoint_uri']}",
    ]
    if status["output_uri"]:
        lines.append(f"output     {status['output_uri']}")
    if status["planned_steps"]:
        done = f"{status['durable_step'] or 0} of {status['planned_steps']} steps durable ({status['percent_done']}%)"
    else:
        done = f"{status['durable_step'] or 0} steps durable (total not known yet)"
    lines.append(f"progress   {done}")
    if status["steps_per_second"]:
        eta = f", ETA {datetime.timedelta(seconds=status['eta_s'])}" if status["eta_s"] is not None else ""
        lines.append(f"speed      {status['steps_per_second']} steps/s{eta}")
    lines.append(f"preemption {status['interruptions']} interruption(s), {status['steps_lost']} step(s) lost")
    for row in status["attempts"]:
        extra = f", {row['steps_lost']} step(s) lost" if row["steps_lost"] else ""
        lines.append(
            f"attempt {row['attempt']:>3} {row['started'] or '?'}  {row['outcome']}{extra}  {row['where'] or ''}"
        )
    broken = [c["name"] for c in status["checkpoints"] if not c["complete"]]
    if broken:
        lines.append(f"incomplete {', '.join(broken)} (never loaded)")
    if status["platform"]:
        lines.append("platform   " + ", ".join(f"{k}={v}" for k, v in status["platform"].items() if v is not None))
    if status["final_metrics"]:
        shown = {k: v for k, v in status["final_metrics"].items() if k.startswith("eval_") or k == "global_step"}
        lines.append(
            "metrics    " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items())
        )
    return "\n".join(lines)


def platform_state(batch_job_id: str | None = None, training_job_name: str | None = None) -> dict | None:
    """The platform's view of the job (AWS Batch DescribeJobs or SageMaker DescribeTrainingJob)."""
    from entrypoint.errors import UserError
    from entrypoint.io import aws
    from entrypoint.submit.command import aws_errors

    if batch_job_id:
        with aws_errors("batch DescribeJobs"):
            found = aws.client("batch").describe_jobs(jobs=[batch_job_id])["jobs"]
        if not found:
            raise UserError(f"--batch-job {batch_job_id}: AWS Batch knows no such job (jobs are kept for 7 days).")
        job = found[0]
        tries = job.get("attempts", [])
        return {
            "batch_job": job["jobName"],
            "status": job["status"],
            "status_reason": job.get("statusReason"),
            "attempts": len(tries),
            "exit_codes": ",".join(str(t.get("container", {}).get("exitCode")) for t in tries) or None,
        }
    if training_job_name:
        with aws_errors("sagemaker DescribeTrainingJob"):
            job = aws.client("sagemaker").describe_training_job(TrainingJobName=training_job_name)
        stopping = job.get("StoppingCondition", {})
        return {
            "training_job": training_job_name,
            "status": job["TrainingJobStatus"],
            "secondary_status": job.get("SecondaryStatus"),
            "failure_reason": job.get("FailureReason"),
            "billable_s": job.get("BillableTimeInSeconds"),
            "max_runtime_s": stopping.get("MaxRuntimeInSeconds"),
            "max_wait_s": stopping.get("MaxWaitTimeInSeconds"),
        }
    return None


def main(argv: list[str]) -> int:
    """`finetune status URI [--output URI] [--batch-job ID | --sagemaker-job NAME] [--json]`."""
    import argparse
    import time

    parser = argparse.ArgumentParser(prog="finetune status", description="Where a run stands.")
    parser.add_argument(
        "uri", help="the run's checkpoint location (FT_CHECKPOINT_URI) or output location (FT_OUTPUT_URI)"
    )
    parser.add_argument("--output", help="the output location, when it is not the parent of the checkpoints")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--batch-job", help="also show this AWS Batch job's state")
    where.add_argument("--sagemaker-job", help="also show this SageMaker training job's state")
    parser.add_argument("--json", action="store_true", help="as JSON, for CI")
    args = parser.parse_args(argv)
    status = summarize(read_run(args.uri, args.output), time.time(), platform_state(args.batch_job, args.sagemaker_job))
    print(json.dumps(status, indent=2, default=str) if args.json else render(status))
    return 0
