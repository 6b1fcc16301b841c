"""`finetune submit batch|sagemaker`: launch a training job in the cloud from a laptop or CI.

Job settings are the same FT_* names the container reads. They come from `--set FT_X=...` and
`--env-file FILE`, are checked here (unknown names fail with a did-you-mean before anything is
submitted), and travel as container environment on Batch and as hyperparameters on SageMaker.
The job id (Batch) or training job name (SageMaker) is the one line on stdout; everything else
goes to stderr. The request builders live in batch.py / sagemaker.py and are pure. This package
needs boto3 and pydantic only (the light install): it never imports the training libraries.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import re
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from entrypoint.errors import UserError, WorldError
from entrypoint.submit import batch as submit_batch
from entrypoint.submit import sagemaker as submit_sagemaker

SETTING_NAME_RE = re.compile(r"^FT_[A-Z0-9_]+$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Credentials come from the job's IAM role. In an override they would be readable by anyone who
# can describe the job, and SageMaker rejects jobs whose parameters look like secrets.
CREDENTIAL_NAMES = frozenset({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"})
# Batch/SageMaker report a bad request with these codes; anything else is the world's fault.
USER_ERROR_CODES = frozenset(
    {
        "ClientException",
        "ValidationException",
        "ResourceInUse",
        "ResourceLimitExceeded",
        "ResourceNotFound",
        "AccessDeniedException",
        "AccessDenied",
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "ExpiredTokenException",
    }
)


def _split_pair(text: str, where: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"{where}: expected KEY=VALUE; got {text!r}")
    return key.strip(), value


def read_env_file(text: str, path: str, environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """KEY=VALUE lines as `docker run --env-file` reads them (no quote processing, so the same
    file works locally); blank lines and `#` comments are skipped; a bare KEY takes its value
    from `environ`."""
    pairs = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"--env-file {path} line {number}"
        if "=" not in line:
            if line not in environ:
                raise UserError(f"{where}: {line} has no value and is not set in this shell; write {line}=VALUE")
            pairs.append((line, environ[line]))
        else:
            pairs.append(_split_pair(line, where))
    return pairs


def collect_settings(pairs: Iterable[tuple[str, str, str]]) -> tuple[dict[str, str], list[str]]:
    """FT_* settings from (flag, key, value) triples, later ones winning, and the problems
    found (bad or unknown names, with a did-you-mean)."""
    from entrypoint.config.settings import check_setting_names  # the one list of setting names

    problems, settings = [], {}
    for flag, key, value in pairs:
        if key in CREDENTIAL_NAMES:
            problems.append(f"{flag} {key}: do not pass credentials; the job gets them from its IAM role")
        elif key.upper().startswith("FT_") and not SETTING_NAME_RE.match(key):
            problems.append(f"{flag} {key}: setting names are upper case, e.g. {key.upper()}")
        elif not SETTING_NAME_RE.match(key):
            known = ENV_NAME_RE.match(key) and not check_setting_names([key.lower()])
            hint = (
                f"did you mean FT_{key.upper()}?" if known else f"use --env {key}=... for other environment variables"
            )
            problems.append(f"{flag} {key}: only FT_* settings go here; {hint}")
        else:
            problems += [f"{flag} {p}" for p in check_setting_names([key.removeprefix("FT_").lower()])]
            settings[key] = value
    return settings, problems


def collect_environment(values: Iterable[str]) -> tuple[dict[str, str], list[str]]:
    """Non-setting environment variables from repeated `--env KEY=VALUE`, and the problems found."""
    env, problems = {}, []
    for text in values:
        key, value = _split_pair(text, "--env")
        if key.startswith("FT_"):
            problems.append(f"--env {key}: FT_* names are settings; pass them with --set {key}=...")
        elif key in CREDENTIAL_NAMES:
            problems.append(f"--env {key}: do not pass credentials; the job gets them from its IAM role")
        elif not ENV_NAME_RE.match(key):
            problems.append(f"--env {key}: not a valid environment variable name")
        else:
            env[key] = value
    return env, problems


def _channel(text: str) -> tuple[str, str]:
    return _split_pair(text, "--channel")


@contextlib.contextmanager
def aws_errors(action: str) -> Iterator[None]:
    """Map botocore failures to the two families: a rejected request is the user's to fix."""
    import botocore.exceptions

    try:
        yield
    except botocore.exceptions.NoCredentialsError as exc:
        raise UserError(f"{action}: no AWS credentials found; set AWS_PROFILE or run `aws configure`") from exc
    except botocore.exceptions.ClientError as exc:
        error = exc.response.get("Error", {})
        detail = f"{error.get('Code')}: {error.get('Message')}"
        if error.get("Code") in USER_ERROR_CODES:
            raise UserError(f"{action} was refused: {detail}") from exc
        raise WorldError(f"{action} failed: {detail}") from exc
    except botocore.exceptions.BotoCoreError as exc:
        raise WorldError(f"{action} failed: {exc}") from exc


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="finetune submit", description="Launch a fine-tuning job on AWS Batch or SageMaker."
    )
    targets = parser.add_subparsers(dest="target", required=True, metavar="{batch,sagemaker}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="FT_NAME=VALUE",
        help="a job setting (repeatable); overrides --env-file",
    )
    common.add_argument(
        "--env-file",
        action="append",
        default=[],
        metavar="FILE",
        help="FT_NAME=VALUE lines, as for `docker run --env-file` (repeatable)",
    )
    common.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another environment variable for the container (repeatable)",
    )
    common.add_argument("--job-name", help="default: finetune-<UTC timestamp>")
    common.add_argument("--region", help="AWS region (default: the AWS config's)")
    common.add_argument(
        "--dry-run", action="store_true", help="print the API request as JSON on stdout instead of sending it"
    )

    batch = targets.add_parser(
        "batch",
        parents=[common],
        help="submit to an AWS Batch job queue",
        description="Submit to AWS Batch. With --array-size N, each of the N children gets "
        "AWS_BATCH_JOB_ARRAY_INDEX (0..N-1) in its environment.",
    )
    batch.add_argument("--job-queue", required=True)
    batch.add_argument("--job-definition", required=True, help="name, name:revision, or ARN")
    batch.add_argument(
        "--image",
        help="run this image: registers a revision of the job definition (its latest "
        "ACTIVE one without a revision) that differs only in the image, unless it "
        "already runs it, and submits against that; --dry-run then describes the "
        "definition and prints both requests",
    )
    batch.add_argument("--array-size", type=int, help="run N children (2-10000) as an array job")
    batch.add_argument("--gpus", type=int, help="override the definition's GPU count")
    batch.add_argument("--timeout-seconds", type=int, help="per-attempt timeout (at least 60)")
    batch.add_argument(
        "--attempts", type=int, help="override the definition's retry attempts (1-10); the exit-code rules are kept"
    )
    batch.add_argument(
        "--wait",
        action="store_true",
        help="follow the job; exit 0 on SUCCEEDED, 64 if it failed with a user error, else 75",
    )
    batch.add_argument("--poll-seconds", type=float, default=15.0, help="--wait's polling interval")

    sm = targets.add_parser("sagemaker", parents=[common], help="create a SageMaker training job")
    sm.add_argument("--image", required=True, help="ECR URI of the finetune image")
    sm.add_argument("--role", required=True, help="ARN of the SageMaker execution role")
    sm.add_argument("--instance-type", required=True, help="e.g. ml.g5.xlarge")
    sm.add_argument("--instance-count", type=int, default=1)
    sm.add_argument("--volume-size-gb", type=int, default=100)
    sm.add_argument("--output-s3-uri", required=True, help="where SageMaker puts <job-name>/output/model.tar.gz")
    sm.add_argument("--checkpoint-s3-uri", help="default: <output-s3-uri>/<job-name>/checkpoints")
    sm.add_argument(
        "--channel",
        action="append",
        default=[],
        type=_channel,
        metavar="NAME=s3://...",
        help="an input channel, mounted at /opt/ml/input/data/NAME (repeatable)",
    )
    sm.add_argument("--no-spot", dest="spot", action="store_false", help="on-demand instead of managed spot")
    sm.add_argument("--max-runtime-seconds", type=int, default=24 * 3600)
    sm.add_argument(
        "--max-wait-seconds",
        type=int,
        help="spot only: waiting plus running time (default: twice --max-runtime-seconds)",
    )
    return parser


def _settings(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    triples = []
    for path in args.env_file:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise UserError(f"--env-file {path}: cannot read it ({exc.strerror})") from exc
        triples += [(f"--env-file {path}:", k, v) for k, v in read_env_file(text, path, environ)]
    triples += [("--set", *_split_pair(text, "--set")) for text in args.settings]
    return collect_settings(triples)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _build_request(args: argparse.Namespace, job_name: str, settings: dict, environment: dict) -> dict:
    if args.target == "batch":
        return submit_batch.build_submit_job_request(
            job_name=job_name,
            job_queue=args.job_queue,
            job_definition=args.job_definition,
            settings=settings,
            environment=environment,
            array_size=args.array_size,
            gpus=args.gpus,
            timeout_seconds=args.timeout_seconds,
            attempts=args.attempts,
        )
    names = [name for name, _ in args.channel]
    if len(set(names)) != len(names):
        raise UserError(f"--channel: each channel name once; got {', '.join(sorted(names))}")
    return submit_sagemaker.build_create_training_job_request(
        job_name=job_name,
        image=args.image,
        role_arn=args.role,
        instance_type=args.instance_type,
        output_s3_uri=args.output_s3_uri,
        settings=settings,
        channels=dict(args.channel),
        environment=environment,
        instance_count=args.instance_count,
        volume_size_gb=args.volume_size_gb,
        spot=args.spot,
        max_runtime_seconds=args.max_runtime_seconds,
        max_wait_seconds=args.max_wait_seconds,
        checkpoint_s3_uri=args.checkpoint_s3_uri,
    )


def with_image(client, job_definition: str, image: str, request: dict, *, dry_run: bool) -> dict:
    """`request` pointed at a revision of `job_definition` that runs `image`: the described one
    if it already does, else a new one registered here. With dry_run, print the RegisterJobDefinition
    (null when none is needed) and SubmitJob requests instead of registering anything."""
    with aws_errors("batch DescribeJobDefinitions"):
        described = submit_batch.pick_job_definition(
            submit_batch.describe_job_definitions(client, job_definition), job_definition
        )
    register = submit_batch.derive_job_definition(described, image)
    if described["containerProperties"].get("image") == image:
        register = None
    if dry_run:
        arn = (
            described["jobDefinitionArn"]
            if register is None
            else "<jobDefinitionArn that RegisterJobDefinition returns>"
        )
        print(
            json.dumps(
                {"RegisterJobDefinition": register, "SubmitJob": {**request, "jobDefinition": arn}},
                indent=2,
                sort_keys=True,
            )
        )
        return request
    if register is None:
        arn = described["jobDefinitionArn"]
        _log(f"job definition {arn} already runs {image}; submitting against it")
    else:
        with aws_errors("batch RegisterJobDefinition"):
            arn = submit_batch.register_job_definition(client, register)
        _log(f"registered job definition {arn} (image {image}, otherwise as {described['jobDefinitionArn']})")
    return {**request, "jobDefinition": arn}


def main(argv: list[str], environ: Mapping[str, str]) -> int:
    """`finetune submit ...`; returns 0, or raises UserError / WorldError."""
    from entrypoint.io import aws

    args = _parser().parse_args(argv)
    settings, problems = _settings(args, environ)
    environment, env_problems = collect_environment(args.env)
    problems += env_problems
    job_name = args.job_name or submit_sagemaker.default_job_name(datetime.datetime.now(datetime.timezone.utc))
    try:
        request = _build_request(args, job_name, settings, environment)
    except UserError as exc:  # reported together with the settings' problems
        problems += str(exc).splitlines()
    if problems:
        raise UserError(
            f"{len(problems)} problem(s) with `finetune submit {args.target}`:\n"
            + "\n".join(f"  - {p}" for p in problems)
        )
    if args.dry_run and not (args.target == "batch" and args.image):
        print(json.dumps(request, indent=2, sort_keys=True))
        return 0

    if args.target == "sagemaker":
        client = aws.client("sagemaker", region=args.region)
        with aws_errors("sagemaker CreateTrainingJob"):
            name = submit_sagemaker.submit(client, request)
        print(name, flush=True)
        _log(
            f"created SageMaker training job {name} "
            f"(spot: {'on' if args.spot else 'off'}, checkpoints: {request['CheckpointConfig']['S3Uri']})"
        )
        return 0

    client = aws.client("batch", region=args.region)
    if args.image:
        request = with_image(client, args.job_definition, args.image, request, dry_run=args.dry_run)
        if args.dry_run:
            return 0
    with aws_errors("batch SubmitJob"):
        job_id = submit_batch.submit(client, request)
    print(job_id, flush=True)
    _log(f"submitted Batch job {job_name} ({job_id}) to queue {args.job_queue}")
    if not args.wait:
        return 0
    with aws_errors("batch DescribeJobs"):
        job = submit_batch.follow(
            lambda i: submit_batch.describe_job(client, i),
            job_id,
            sleep=time.sleep,
            log=_log,
            poll_seconds=args.poll_seconds,
        )
    if job["status"] == "FAILED":
        raise submit_batch.failure_error(job)
    return 0
