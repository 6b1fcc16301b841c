"""`finetune submit sagemaker`: the CreateTrainingJob request (pure), the call, and following the job.

Managed spot is on by default: SageMaker restarts an interrupted job on a new instance and
syncs /opt/ml/checkpoints from CheckpointConfig.S3Uri, where the container resumes from.
MaxWait (StoppingCondition.MaxWaitTimeInSeconds) caps the waiting for spot capacity plus the
training of all those restarts together; `--wait` says when it, or MaxRuntime, ended the job.
https://docs.aws.amazon.com/sagemaker/latest/dg/model-managed-spot-training.html
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Mapping

from entrypoint.errors import FinetuneError, UserError, WorldError
from entrypoint.reporting import STANDARD_METRICS, metric_definitions
from entrypoint.submit.batch import USER_EXIT_CODES

# https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_CreateTrainingJob.html
JOB_NAME_RE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
CHANNEL_NAME_RE = re.compile(r"^[A-Za-z0-9.\-_]{1,64}$")
ROLE_ARN_RE = re.compile(r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/\S+$")
S3_URI_RE = re.compile(r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?$")
ENV_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]{0,511}$")
CHECKPOINT_LOCAL_PATH = "/opt/ml/checkpoints"
MAX_RUNTIME_LIMIT_SECONDS = 28 * 24 * 3600  # SageMaker's ceiling for MaxRuntime and MaxWait
MAX_HYPERPARAMETERS = 100
MAX_ENVIRONMENT = 100
# https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_DescribeTrainingJob.html
TERMINAL_STATUSES = frozenset({"Completed", "Failed", "Stopped"})
# SecondaryStatus of a job SageMaker stopped at one of its StoppingCondition limits.
MAX_WAIT_EXCEEDED = "MaxWaitTimeExceeded"
MAX_RUNTIME_EXCEEDED = "MaxRuntimeExceeded"
# A custom container's non-zero exit shows in FailureReason, e.g. "AlgorithmError: ..., exit code: 64".
EXIT_CODE_RE = re.compile(r"exit code:?\s*(\d+)", re.IGNORECASE)


def default_job_name(now: datetime.datetime) -> str:
    """`finetune-YYYYMMDD-HHMMSS-mmm` in UTC (milliseconds: names must be unique per region)."""
    now = now.astimezone(datetime.timezone.utc)
    return f"finetune-{now:%Y%m%d-%H%M%S}-{now.microsecond // 1000:03d}"


def hyperparameters(settings: Mapping[str, str]) -> dict[str, str]:
    """FT_LEARNING_RATE=3e-5 -> {"learning_rate": "3e-5"}: the names the container reads from
    hyperparameters.json, values as strings."""
    return {key.removeprefix("FT_").lower(): str(value) for key, value in sorted(settings.items())}


def default_max_wait_seconds(max_runtime_seconds: int) -> int:
    """Twice the runtime (time to find spot capacity counts against MaxWait), within the ceiling."""
    return max(max_runtime_seconds, min(2 * max_runtime_seconds, MAX_RUNTIME_LIMIT_SECONDS))


def build_create_training_job_request(
    *,
    job_name: str,
    image: str,
    role_arn: str,
    instance_type: str,
    output_s3_uri: str,
    settings: Mapping[str, str],
    channels: Mapping[str, str] | None = None,
    environment: Mapping[str, str] | None = None,
    instance_count: int = 1,
    volume_size_gb: int = 100,
    spot: bool = True,
    max_runtime_seconds: int = 24 * 3600,
    max_wait_seconds: int | None = None,
    checkpoint_s3_uri: str | None = None,
) -> dict:
    """The `sagemaker.create_training_job` keyword arguments. Raises UserError listing every bad flag.

    Without --checkpoint-s3-uri, checkpoints go next to SageMaker's own output for the job:
    `<output-s3-uri>/<job-name>/checkpoints`.
    """
    channels = dict(channels or {})
    environment = dict(environment or {})
    problems = []
    if not JOB_NAME_RE.match(job_name):
        problems.append(
            f"--job-name {job_name!r}: SageMaker job names are 1-63 letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    if not image:
        problems.append("--image is required: the ECR URI of the finetune image")
    if not ROLE_ARN_RE.match(role_arn or ""):
        problems.append(f"--role {role_arn!r}: give the IAM role's ARN, arn:aws:iam::<account>:role/<name>")
    if not (instance_type or "").startswith("ml."):
        problems.append(f"--instance-type {instance_type!r}: use a SageMaker type such as ml.g5.xlarge")
    if instance_count < 1:
        problems.append(f"--instance-count must be at least 1; got {instance_count}")
    if volume_size_gb < 1:
        problems.append(f"--volume-size-gb must be at least 1; got {volume_size_gb}")
    for flag, uri in [
        ("--output-s3-uri", output_s3_uri),
        ("--checkpoint-s3-uri", checkpoint_s3_uri),
        *((f"--channel {name}", uri) for name, uri in channels.items()),
    ]:
        if uri is not None and not S3_URI_RE.match(uri):
            problems.append(f"{flag}: {uri!r} is not an S3 URI like s3://bucket/prefix")
    for name in channels:
        if not CHANNEL_NAME_RE.match(name):
            problems.append(f"--channel {name}: channel names are 1-64 letters, digits, '.', '-' or '_'")
    for name in environment:
        if not ENV_NAME_RE.match(name):
            problems.append(f"--env {name}: not a valid environment variable name")
    if len(environment) > MAX_ENVIRONMENT:
        problems.append(f"--env: at most {MAX_ENVIRONMENT} variables; got {len(environment)}")
    if len(settings) > MAX_HYPERPARAMETERS:
        problems.append(
            f"--set/--env-file: SageMaker takes at most {MAX_HYPERPARAMETERS} hyperparameters; got {len(settings)}"
        )
    if not 1 <= max_runtime_seconds <= MAX_RUNTIME_LIMIT_SECONDS:
        problems.append(
            f"--max-runtime-seconds must be between 1 and {MAX_RUNTIME_LIMIT_SECONDS}; got {max_runtime_seconds}"
        )
    if max_wait_seconds is not None and not spot:
        problems.append("--max-wait-seconds applies only to managed spot; drop it or drop --no-spot")
    elif max_wait_seconds is not None and not max_runtime_seconds <= max_wait_seconds <= MAX_RUNTIME_LIMIT_SECONDS:
        problems.append(
            f"--max-wait-seconds ({max_wait_seconds}) must be at least --max-runtime-seconds "
            f"({max_runtime_seconds}) and at most {MAX_RUNTIME_LIMIT_SECONDS}: waiting for spot "
            "capacity and training both count against it"
        )
    if problems:
        raise UserError("\n".join(problems))

    stopping: dict = {"MaxRuntimeInSeconds": max_runtime_seconds}
    if spot:
        stopping["MaxWaitTimeInSeconds"] = max_wait_seconds or default_max_wait_seconds(max_runtime_seconds)
    request: dict = {
        "TrainingJobName": job_name,
        "AlgorithmSpecification": {
            "TrainingImage": image,
            "TrainingInputMode": "File",
            "MetricDefinitions": metric_definitions(STANDARD_METRICS),
        },
        "RoleArn": role_arn,
        "HyperParameters": hyperparameters(settings),
        "InputDataConfig": [
            {
                "ChannelName": name,
                "DataSource": {
                    "S3DataSource": {
                        "S3DataType": "S3Prefix",
                        "S3Uri": uri,
                        "S3DataDistributionType": "FullyReplicated",
                    }
                },
            }
            for name, uri in sorted(channels.items())
        ],
        "OutputDataConfig": {"S3OutputPath": output_s3_uri},
        "ResourceConfig": {
            "InstanceType": instance_type,
            "InstanceCount": instance_count,
            "VolumeSizeInGB": volume_size_gb,
        },
        "StoppingCondition": stopping,
        "EnableManagedSpotTraining": spot,
        "CheckpointConfig": {
            "S3Uri": checkpoint_s3_uri or f"{output_s3_uri.rstrip('/')}/{job_name}/checkpoints",
            "LocalPath": CHECKPOINT_LOCAL_PATH,
        },
        "Environment": dict(sorted(environment.items())),
    }
    # The API rejects an empty channel list; an empty map would only be noise.
    for key in ("InputDataConfig", "Environment"):
        if not request[key]:
            del request[key]
    return request


def submit(client, request: Mapping) -> str:
    """Create the training job; returns its name."""
    client.create_training_job(**request)
    return request["TrainingJobName"]


def describe_training_job(client, name: str) -> Mapping:
    return client.describe_training_job(TrainingJobName=name)


def follow(
    describe: Callable[[str], Mapping],
    name: str,
    *,
    sleep: Callable[[float], None],
    log: Callable[[str], None],
    poll_seconds: float,
) -> Mapping:
    """Poll `describe(name)` until the training job is Completed, Failed or Stopped, logging each
    change of status or secondary status; returns the last description."""
    last = None
    while True:
        job = describe(name)
        state = (job["TrainingJobStatus"], job.get("SecondaryStatus"))
        if state != last:
            log(f"{name}: {state[0]}" + (f" ({state[1]})" if state[1] and state[1] != state[0] else ""))
            last = state
        if state[0] in TERMINAL_STATUSES:
            return job
        sleep(poll_seconds)


def _limit_reached(job: Mapping) -> str | None:
    """MAX_WAIT_EXCEEDED or MAX_RUNTIME_EXCEEDED when SageMaker stopped `job` at that limit."""
    reason = job.get("FailureReason") or ""
    for limit in (MAX_WAIT_EXCEEDED, MAX_RUNTIME_EXCEEDED):
        if job.get("SecondaryStatus") == limit or limit in reason:
            return limit
    return None


def outcome_error(job: Mapping) -> FinetuneError | None:
    """None for a Completed training job (a DescribeTrainingJob response); else the error its end
    maps to, saying which limit ended it and how to raise it when MaxWait or MaxRuntime did:
    UserError when the container exited 64 or 2, WorldError otherwise."""
    if job["TrainingJobStatus"] == "Completed":
        return None
    name = job["TrainingJobName"]
    stopping = job.get("StoppingCondition") or {}
    runtime, wait = stopping.get("MaxRuntimeInSeconds"), stopping.get("MaxWaitTimeInSeconds")
    checkpoints = (job.get("CheckpointConfig") or {}).get("S3Uri")
    times = f"training {job.get('TrainingTimeInSeconds', '?')} s, billable {job.get('BillableTimeInSeconds', '?')} s"
    resume = (
        f"Its checkpoints are at {checkpoints}: submit again with --checkpoint-s3-uri {checkpoints} and it resumes "
        "from the newest durable one"
        if checkpoints
        else "It had no checkpoint location, so a new job starts over"
    )
    limit = _limit_reached(job)
    if limit == MAX_WAIT_EXCEEDED:
        if wait is not None and wait < MAX_RUNTIME_LIMIT_SECONDS:
            raise_it = (
                f"raise --max-wait-seconds (e.g. {min(2 * wait, MAX_RUNTIME_LIMIT_SECONDS)}; at most "
                f"{MAX_RUNTIME_LIMIT_SECONDS}) or run on demand with --no-spot"
            )
        else:
            raise_it = f"it is at SageMaker's ceiling ({MAX_RUNTIME_LIMIT_SECONDS} s): run on demand with --no-spot"
        return WorldError(
            f"SageMaker training job {name} was stopped at MaxWait: MaxWaitTimeInSeconds ({wait} s), the waiting "
            f"for spot capacity plus the training of every restart together, was the binding limit, not "
            f"MaxRuntimeInSeconds ({runtime} s); {times}. To give it more time, {raise_it}. {resume}."
        )
    if limit == MAX_RUNTIME_EXCEEDED:
        return WorldError(
            f"SageMaker training job {name} was stopped at MaxRuntime: MaxRuntimeInSeconds ({runtime} s) was the "
            f"binding limit; {times}. To give it more time, raise --max-runtime-seconds (at most "
            f"{MAX_RUNTIME_LIMIT_SECONDS}; with spot, --max-wait-seconds at least as much). {resume}."
        )
    reason = job.get("FailureReason") or "no reason given"
    logs = f"logs: CloudWatch log group /aws/sagemaker/TrainingJobs, streams {name}/algo-*"
    message = f"SageMaker training job {name} {job['TrainingJobStatus']}: {reason}; {logs}"
    found = EXIT_CODE_RE.search(reason)
    if found and int(found.group(1)) in USER_EXIT_CODES:
        return UserError(message + ". Exit code 64 is a settings or data mistake: fix it and resubmit.")
    return WorldError(f"{message}. {resume}.")
