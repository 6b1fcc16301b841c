"""`finetune submit batch`: the SubmitJob request (pure), the call, and following the job.

Settings travel as container environment overrides on top of the job definition, which the
Terraform module registers with the project's retry rules (errors.RETRY_RULES). A job's image
cannot be overridden at submit time, so `--image` registers a new revision of the definition
that differs only in its image (derive_job_definition) and submits against that.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping

from entrypoint.errors import ExitCode, FinetuneError, UserError, WorldError, retry_rules_json

JOB_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
TERMINAL_STATUSES = frozenset({"SUCCEEDED", "FAILED"})
# Exit codes that mean the job's input is wrong: rerunning it unchanged cannot succeed.
USER_EXIT_CODES = frozenset({int(ExitCode.USER_ERROR), int(ExitCode.USAGE)})
# https://docs.aws.amazon.com/batch/latest/APIReference/API_SubmitJob.html
MAX_ARRAY_SIZE = 10_000
MIN_TIMEOUT_SECONDS = 60
MAX_ATTEMPTS = 10
# What DescribeJobDefinitions reports but RegisterJobDefinition does not take.
# https://docs.aws.amazon.com/batch/latest/APIReference/API_JobDefinition.html
READ_ONLY_DEFINITION_FIELDS = frozenset({"jobDefinitionArn", "revision", "status", "containerOrchestrationType"})


def evaluate_on_exit() -> list[dict[str, str]]:
    """errors.RETRY_RULES in the Batch API's camelCase `evaluateOnExit` shape."""
    return retry_rules_json(api=True)


def build_submit_job_request(
    *,
    job_name: str,
    job_queue: str,
    job_definition: str,
    settings: Mapping[str, str],
    environment: Mapping[str, str] | None = None,
    array_size: int | None = None,
    gpus: int | None = None,
    timeout_seconds: int | None = None,
    attempts: int | None = None,
) -> dict:
    """The `batch.submit_job` keyword arguments. Raises UserError listing every bad flag."""
    environment = dict(environment or {})
    problems = []
    if not JOB_NAME_RE.match(job_name):
        problems.append(
            f"--job-name {job_name!r}: Batch job names are 1-128 letters, digits, '-' or '_', "
            "starting with a letter or digit"
        )
    if not job_queue:
        problems.append("--job-queue is required (the queue name or ARN, e.g. from `terraform output`)")
    if not job_definition:
        problems.append("--job-definition is required (name, name:revision, or ARN)")
    for key in environment:
        if key.startswith("AWS_BATCH"):
            problems.append(f"--env {key}: names starting with AWS_BATCH are reserved by Batch; rename it")
    if array_size is not None and not 2 <= array_size <= MAX_ARRAY_SIZE:
        problems.append(
            f"--array-size must be between 2 and {MAX_ARRAY_SIZE}; got {array_size} (leave it out for a single job)"
        )
    if gpus is not None and gpus < 1:
        problems.append(f"--gpus must be a positive integer; got {gpus} (leave it out to keep the definition's)")
    if timeout_seconds is not None and timeout_seconds < MIN_TIMEOUT_SECONDS:
        problems.append(
            f"--timeout-seconds must be at least {MIN_TIMEOUT_SECONDS} (a Batch minimum); got {timeout_seconds}"
        )
    if attempts is not None and not 1 <= attempts <= MAX_ATTEMPTS:
        problems.append(f"--attempts must be between 1 and {MAX_ATTEMPTS}; got {attempts}")
    if problems:
        raise UserError("\n".join(problems))

    merged = {**environment, **settings}
    overrides: dict = {"environment": [{"name": k, "value": merged[k]} for k in sorted(merged)]}
    if gpus is not None:
        overrides["resourceRequirements"] = [{"type": "GPU", "value": str(gpus)}]
    request: dict = {
        "jobName": job_name,
        "jobQueue": job_queue,
        "jobDefinition": job_definition,
        "containerOverrides": overrides,
    }
    if array_size is not None:
        request["arrayProperties"] = {"size": array_size}
    if timeout_seconds is not None:
        request["timeout"] = {"attemptDurationSeconds": timeout_seconds}
    if attempts is not None:
        # A retryStrategy in SubmitJob replaces the definition's whole strategy, rules included,
        # so the project's exit-code rules go along or a user error would be retried.
        request["retryStrategy"] = {"attempts": attempts, "evaluateOnExit": evaluate_on_exit()}
    return request


def split_job_definition(reference: str) -> tuple[str, int | None]:
    """(name, revision or None) of a `--job-definition`: name, name:revision, or an ARN."""
    _, marker, rest = reference.partition(":job-definition/")
    name, _, revision = (rest if marker else reference).partition(":")
    if not revision:
        return name, None
    if not revision.isdigit():
        raise UserError(f"--job-definition {reference!r}: the revision after ':' must be a number")
    return name, int(revision)


def pick_job_definition(definitions: list[Mapping], reference: str) -> Mapping:
    """The description `reference` names among `definitions` (DescribeJobDefinitions entries for
    its name): the given revision, or without one the latest ACTIVE revision, as SubmitJob does."""
    name, revision = split_job_definition(reference)
    mine = [d for d in definitions if d.get("jobDefinitionName") == name]
    if revision is not None:
        found = [d for d in mine if d.get("revision") == revision]
    else:
        found = sorted((d for d in mine if d.get("status") == "ACTIVE"), key=lambda d: d["revision"])[-1:]
    if not found:
        what = f"revision {revision} of {name}" if revision is not None else f"ACTIVE revision of {name}"
        raise UserError(f"--job-definition {reference}: found no {what} (check the name and --region)")
    return found[-1]


def derive_job_definition(described: Mapping, image: str) -> dict:
    """The RegisterJobDefinition request for a new revision of `described` (a DescribeJobDefinitions
    entry) that runs `image`: role, environment, resources, retry rules, timeout and tags are kept."""
    if not image or any(c.isspace() for c in image):
        raise UserError(
            f"--image {image!r}: expected an image URI such as ACCOUNT.dkr.ecr.REGION.amazonaws.com/finetune:TAG"
        )
    if "containerProperties" not in described:
        kind = next(
            (k for k in ("nodeProperties", "ecsProperties", "eksProperties") if k in described),
            "no containerProperties",
        )
        raise UserError(
            f"--image works with single-container job definitions; {described.get('jobDefinitionArn')} has {kind}"
        )
    request = {k: copy.deepcopy(v) for k, v in described.items() if k not in READ_ONLY_DEFINITION_FIELDS}
    request["containerProperties"]["image"] = image
    return request


def describe_job_definitions(client, reference: str) -> list[Mapping]:
    """Every revision of the definition `reference` names (by name, so name:revision works on
    moto too, and paginated: a definition used with --image collects revisions)."""
    name, _ = split_job_definition(reference)
    pages = client.get_paginator("describe_job_definitions").paginate(jobDefinitionName=name)
    return [d for page in pages for d in page["jobDefinitions"]]


def register_job_definition(client, request: Mapping) -> str:
    """Register the revision; returns its ARN."""
    return client.register_job_definition(**request)["jobDefinitionArn"]


def submit(client, request: Mapping) -> str:
    """Submit the job; returns its id."""
    return client.submit_job(**request)["jobId"]


def failure_error(job: Mapping) -> FinetuneError:
    """The error a FAILED job description maps to: UserError when its container exited 64 or 2
    (the input is wrong; resubmitting cannot help), WorldError otherwise."""
    attempts = job.get("attempts") or []
    container = attempts[-1].get("container", {}) if attempts else job.get("container", {})
    exit_code = container.get("exitCode")
    reason = job.get("statusReason") or (attempts[-1].get("statusReason") if attempts else None) or "no reason given"
    logs = container.get("logStreamName")
    where = f"; logs: CloudWatch stream {logs}" if logs else ""
    message = (
        f"Batch job {job.get('jobName')} ({job.get('jobId')}) FAILED after {len(attempts)} attempt(s), "
        f"exit code {exit_code}: {reason}{where}"
    )
    if exit_code in USER_EXIT_CODES:
        return UserError(message + ". Exit code 64 is a settings or data mistake: fix it and resubmit.")
    return WorldError(message)


def follow(
    describe: Callable[[str], Mapping],
    job_id: str,
    *,
    sleep: Callable[[float], None],
    log: Callable[[str], None],
    poll_seconds: float,
) -> Mapping:
    """Poll `describe(job_id)` until the job is SUCCEEDED or FAILED, logging each status change;
    returns the last description."""
    last = None
    while True:
        job = describe(job_id)
        status = job["status"]
        if status != last:
            summary = job.get("arrayProperties", {}).get("statusSummary")
            counts = " ".join(f"{k}={v}" for k, v in sorted(summary.items()) if v) if summary else ""
            log(f"{job_id}: {status}" + (f" ({counts})" if counts else ""))
            last = status
        if status in TERMINAL_STATUSES:
            return job
        sleep(poll_seconds)


def describe_job(client, job_id: str) -> Mapping:
    """One job's description; for a failed array parent, its first failed child (which holds
    the attempts and exit code the parent lacks)."""
    jobs = client.describe_jobs(jobs=[job_id])["jobs"]
    if not jobs:
        raise WorldError(f"Batch job {job_id} not found by describe_jobs (check --region)")
    job = jobs[0]
    if job["status"] == "FAILED" and "arrayProperties" in job and not job.get("attempts"):
        failed = client.list_jobs(arrayJobId=job_id, jobStatus="FAILED").get("jobSummaryList", [])
        if failed:
            child = client.describe_jobs(jobs=[failed[0]["jobId"]])["jobs"][0]
            return {**child, "status": "FAILED", "arrayProperties": job["arrayProperties"]}
    return job
