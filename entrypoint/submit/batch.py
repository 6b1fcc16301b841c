"""`finetune submit batch`: the SubmitJob request (pure), the call, and following the job.

Settings travel as container environment overrides on top of the job definition, which the
Terraform module registers with the project's retry rules (errors.RETRY_RULES). A job's image
cannot be overridden at submit time, so `--image` registers a new revision of the definition
that differs only in its image (derive_job_definition) and submits against that.

A job may use at most MAX_ATTEMPTS attempts and every spot interruption uses one, so a long job on
a busy spot market can run out of them while making progress. With `--wait --resubmit N` the job
is followed and, when it ran out of attempts while being interrupted (`resubmission`, a pure
decision), submitted again as `<name>-rN` with the same settings: it resumes from the newest
durable checkpoint at the same location.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Callable, Mapping

from entrypoint.errors import (
    EXIT_CODES,
    RETRY_RULES,
    ExitCode,
    FinetuneError,
    UserError,
    WorldError,
    retry_rules_json,
)

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
# A job that ran out of attempts this way is resubmitted (--resubmit): its last attempt exited with a
# code the exit-code table retries (the job resumes from its newest durable checkpoint), or it
# ended with a status reason the retry rules retry whatever the exit code: a spot reclaim, "Host
# EC2 (instance i-...) terminated.", which has none. A user error or a bug never is.
RESUBMIT_EXIT_CODES = frozenset(doc.code for doc in EXIT_CODES if doc.retried)
RESUBMIT_STATUS_REASONS = tuple(
    rule.on_status_reason for rule in RETRY_RULES if rule.action == "RETRY" and rule.on_status_reason
)
NEVER_RESUBMITTED = USER_EXIT_CODES | {int(ExitCode.UNEXPECTED)}


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


@dataclasses.dataclass(frozen=True)
class Resubmission:
    """Whether to resubmit a finished job, and why (or why not) in words for the log. `eligible`:
    it ended the way a resubmission resumes from, whatever the limit."""

    resubmit: bool
    eligible: bool
    reason: str


def _reason_matches(pattern: str, reason: str) -> bool:
    # Batch's onStatusReason patterns match exactly, or as a prefix when they end in "*".
    return reason.startswith(pattern[:-1]) if pattern.endswith("*") else reason == pattern


def _exit_code_words(code: int | None) -> str:
    if code is None:
        return "no exit code"
    name = next((doc.name for doc in EXIT_CODES if doc.code == code), None)
    return f"exit code {code}" + (f", {name}" if name else "")


def resubmission(job: Mapping, resubmitted: int, limit: int) -> Resubmission:
    """Whether `--resubmit limit` resubmits `job` (a DescribeJobs entry), `resubmitted` times so far:
    only a FAILED job that used all its attempts (retryStrategy.attempts, 1 without one) and whose
    last attempt was interrupted (an exit code in RESUBMIT_EXIT_CODES) or reclaimed with its host
    (a status reason in RESUBMIT_STATUS_REASONS, usually no exit code), never one that exited with
    a code in NEVER_RESUBMITTED (64, 2, 1). Fewer attempts than allowed means
    Batch stopped retrying on purpose: TerminateJob, or the attempt timeout, which it never retries."""
    label = f"Batch job {job.get('jobName')} ({job.get('jobId')})"
    attempts = job.get("attempts") or []
    if job.get("status") != "FAILED":
        return Resubmission(False, False, f"{label} ended {job.get('status')}")
    if not attempts:
        reason = job.get("statusReason") or "no reason given"
        return Resubmission(False, False, f"{label} FAILED before any attempt ran ({reason}); nothing to resume")
    last = attempts[-1]
    code = last.get("container", {}).get("exitCode")
    reason = last.get("statusReason") or job.get("statusReason") or "no reason given"
    allowed = (job.get("retryStrategy") or {}).get("attempts") or 1
    used = f"{len(attempts)} of its {allowed} attempt(s)"
    if code in NEVER_RESUBMITTED:
        return Resubmission(False, False, f"{label} FAILED with {_exit_code_words(code)}: rerunning cannot fix it")
    if code in RESUBMIT_EXIT_CODES:
        how = f"was interrupted ({_exit_code_words(code)})"
    elif any(_reason_matches(pattern, reason) for pattern in RESUBMIT_STATUS_REASONS):
        how = f"lost its host, a spot reclaim ({_exit_code_words(code)})"
    else:
        return Resubmission(
            False, False, f"{label} FAILED after {used} with {_exit_code_words(code)}, which is not retried: {reason}"
        )
    if len(attempts) < allowed:
        return Resubmission(
            False,
            False,
            f"{label} FAILED after {used}, so Batch stopped it on purpose rather than running out of attempts "
            f"(TerminateJob, or the attempt timeout, which Batch never retries): {reason}",
        )
    ended = f"{label} used all {used}; the last {how}: {reason}"
    if resubmitted >= limit:
        more = "--resubmit N would submit it again" if limit == 0 else f"--resubmit {limit} is used up"
        return Resubmission(False, True, f"{ended}. {more} (to resume from its newest durable checkpoint)")
    return Resubmission(
        True,
        True,
        f"{ended}. Resubmitting it ({resubmitted + 1} of {limit}) with the same settings, to resume from its "
        "newest durable checkpoint",
    )


def resubmission_name(job_name: str, count: int) -> str:
    """The name of the `count`th resubmission of the job first submitted as `job_name`."""
    return f"{job_name}-r{count}"


def resubmit_problems(*, job_name: str, resubmit: int, wait: bool, array_size: int | None) -> list[str]:
    """What is wrong with `--resubmit` given the other flags."""
    if resubmit == 0:
        return []
    if resubmit < 0:
        return [f"--resubmit must be 0 (the default: never) or more; got {resubmit}"]
    problems = []
    if not wait:
        problems.append("--resubmit needs --wait: it follows the job to see how it ended")
    if array_size is not None:
        problems.append(
            "--resubmit works with single jobs, not --array-size: an array's children share one job name and queue "
            "slot; submit each long child as its own job to resubmit it"
        )
    longest = resubmission_name(job_name, resubmit)
    if JOB_NAME_RE.match(job_name) and not JOB_NAME_RE.match(longest):
        problems.append(
            f"--job-name {job_name!r} is too long for --resubmit {resubmit}: the resubmissions are named "
            f"{longest!r} and Batch job names are at most 128 characters"
        )
    return problems


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


def follow_and_resubmit(
    request: Mapping,
    job_id: str,
    *,
    describe: Callable[[str], Mapping],
    submit: Callable[[Mapping], str],
    limit: int,
    announce: Callable[[str], None],
    sleep: Callable[[float], None],
    log: Callable[[str], None],
    poll_seconds: float,
) -> Mapping:
    """Follow `job_id` (submitted with `request`) to its end and, while `resubmission` says so,
    `submit` the same request as `<jobName>-rN`, `announce` its id and follow that one. Returns
    the last job's description."""
    resubmitted = 0
    while True:
        job = follow(describe, job_id, sleep=sleep, log=log, poll_seconds=poll_seconds)
        decision = resubmission(job, resubmitted, limit)
        if not decision.resubmit:
            if job["status"] == "FAILED" and (limit or decision.eligible):
                log(f"not resubmitted: {decision.reason}")
            return job
        resubmitted += 1
        again = {**request, "jobName": resubmission_name(request["jobName"], resubmitted)}
        job_id = submit(again)
        announce(job_id)
        log(f"{decision.reason}: submitted {again['jobName']} ({job_id})")


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
