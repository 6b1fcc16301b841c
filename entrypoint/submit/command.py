"""`finetune submit batch|sagemaker`: launch a training job in the cloud from a laptop or CI.

Job settings are the same FT_* names the container reads. They come from `--set FT_X=...` and
`--env-file FILE`, are checked here (unknown names fail with a did-you-mean before anything is
submitted), and travel as container environment on Batch and as hyperparameters on SageMaker,
where anyone who may describe the job reads them: names that look secret (config/sensitive.py) and
values that hold one are refused; secrets travel as FT_SECRETS references, read by the job.
The job id (Batch) or training job name (SageMaker) is the one line on stdout (each Batch
resubmission, --resubmit, adds its id on a line of its own); everything else goes to stderr.
The request builders live in batch.py / sagemaker.py and are pure. This package needs boto3 and
pydantic only (the light install): it never imports the training libraries.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

from entrypoint.config import sensitive
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


def secret_refusal(flag: str, key: str) -> str:
    """The problem with passing a secret-looking name (config/sensitive.py) by value, and the way
    to pass it instead. The value itself is never shown."""
    target = (
        "HF_TOKEN" if key == "FT_HUB_TOKEN" else key
    )  # the Trainer's hub_token only pushes; downloads read HF_TOKEN
    return (
        f"{flag} {key}: the name says it holds a secret. Values given here are stored with the job, where anyone "
        "who may describe it reads them (DescribeJobs, DescribeTrainingJob), and --dry-run prints them. Keep it in "
        "AWS Secrets Manager or SSM Parameter Store and pass where it is: "
        f"--set FT_SECRETS={target}=arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME (the job reads it as it "
        "starts; its role needs read access to it). On Batch the job definition's `secrets` also work (Terraform: "
        "the batch module's `secrets`). See docs/settings.md, Secrets."
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
        elif sensitive.is_secret_name(key):
            problems.append(secret_refusal(flag, key))
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
            if key == sensitive.SECRETS_SETTING:
                problems += [f"{flag} {p}" for p in sensitive.reference_problems(value)]
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
        elif sensitive.is_secret_name(key):
            problems.append(secret_refusal("--env", key))
        elif not ENV_NAME_RE.match(key):
            problems.append(f"--env {key}: not a valid environment variable name")
        else:
            env[key] = value
    return env, problems


def value_problems(settings: Mapping[str, str], environment: Mapping[str, str], known: Iterable[str]) -> list[str]:
    """Values that hold a secret under an innocent name: credentials in a URI (user:password@) or
    the value of one of this shell's secret-looking variables (`known`). The value is not shown."""
    problems = []
    for flag, values in (("--set/--env-file/--config", settings), ("--env", environment)):
        for key, value in values.items():
            if sensitive.scrub(value, known) != value:
                problems.append(
                    f"{flag} {key}: the value holds a secret (credentials in a URI, or the value of a secret-looking "
                    "variable of this shell), which would be stored with the job. Pass secrets with FT_SECRETS "
                    "(see docs/settings.md, Secrets)."
                )
    return problems


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


def _aws_call(action: str, function: Callable, *args):
    """`function(*args)`, its botocore failures mapped by aws_errors(action)."""
    with aws_errors(action):
        return function(*args)


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
        "--config",
        metavar="FILE",
        help=(
            "a YAML or JSON file of settings (as FT_CONFIG reads), checked here: a local file's settings are sent "
            "like --set ones (below --env-file and --set); an s3:// URI is sent as FT_CONFIG for the job to read"
        ),
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
    batch.add_argument(
        "--resubmit",
        type=int,
        default=0,
        metavar="N",
        help="with --wait: when the job used all its attempts and the last was interrupted (exit "
        f"{' or '.join(map(str, sorted(submit_batch.RESUBMIT_EXIT_CODES, reverse=True)))}, or a "
        "spot reclaim), submit it again as <job-name>-rK with the same settings, at most N times; it resumes from "
        "the newest durable checkpoint (default 0: never)",
    )

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
    sm.add_argument(
        "--wait",
        action="store_true",
        help="follow the job; exit 0 on Completed, 64 if it failed with a user error, else 75 (saying when "
        "MaxWait or MaxRuntime stopped it, and how to raise it)",
    )
    sm.add_argument("--poll-seconds", type=float, default=30.0, help="--wait's polling interval")
    return parser


def config_settings(uri: str, read: Callable[[str], bytes | None]) -> tuple[list[tuple[str, str, str]], list[str]]:
    """`--config`: (flag, FT_NAME, value) triples and the problems found. A local file is read here
    and its settings travel like --set ones (the path means nothing inside the container); an S3
    URI travels as FT_CONFIG, checked here too when it can be read with this machine's credentials
    (the job reads it with its own role)."""
    from entrypoint.config.settings import config_file_values

    flag = f"--config {uri}:"
    try:
        data = read(uri)
    except (UserError, WorldError) as exc:
        if not uri.startswith("s3://"):
            raise
        _log(f"--config {uri}: not checked here ({exc}); the job reads it with its own role")
        return [(flag, "FT_CONFIG", uri)], []
    if data is None:
        return [], [f"--config {uri}: no such file"]
    values, found = config_file_values(uri, data)
    problems = [p.replace(f"FT_CONFIG {uri}", f"--config {uri}", 1) for p in found]
    if uri.startswith("s3://"):
        return [(flag, "FT_CONFIG", uri)], problems
    if problems:
        return [], problems
    return [(flag, f"FT_{name.upper()}", json.dumps(v) if isinstance(v, list) else v) for name, v in values.items()], []


def _settings(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    from entrypoint.io import storage

    triples, problems = config_settings(args.config, storage.read_file) if args.config else ([], [])
    for path in args.env_file:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise UserError(f"--env-file {path}: cannot read it ({exc.strerror})") from exc
        triples += [(f"--env-file {path}:", k, v) for k, v in read_env_file(text, path, environ)]
    triples += [("--set", *_split_pair(text, "--set")) for text in args.settings]
    settings, found = collect_settings(triples)
    return settings, problems + found


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


def print_request(request: dict, known: Iterable[str] = ()) -> None:
    """A --dry-run request as JSON on stdout, redacted (config/sensitive.py): a secret-looking
    name's value, e.g. in a job definition's environment, and the `known` secret values."""
    print(json.dumps(sensitive.redact(request, known=known), indent=2, sort_keys=True))


def with_image(
    client, job_definition: str, image: str, request: dict, *, dry_run: bool, known: Iterable[str] = ()
) -> dict:
    """`request` pointed at a revision of `job_definition` that runs `image`: the described one
    if it already does, else a new one registered here. With dry_run, print the RegisterJobDefinition
    (null when none is needed) and SubmitJob requests instead of registering anything (redacted,
    `known` secret values included)."""
    with aws_errors("batch DescribeJobDefinitions"):
        described = submit_batch.pick_job_definition(
            submit_batch.describe_job_definitions(client, job_definition), job_definition
        )
    register: dict | None = submit_batch.derive_job_definition(described, image)
    if described["containerProperties"].get("image") == image:
        register = None
    if dry_run:
        arn = (
            described["jobDefinitionArn"]
            if register is None
            else "<jobDefinitionArn that RegisterJobDefinition returns>"
        )
        print_request({"RegisterJobDefinition": register, "SubmitJob": {**request, "jobDefinition": arn}}, known)
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
    known = sensitive.secret_values(environ)  # this shell's secrets, e.g. AWS_SESSION_TOKEN
    problems += env_problems + value_problems(settings, environment, known)
    job_name = args.job_name or submit_sagemaker.default_job_name(datetime.datetime.now(datetime.timezone.utc))
    if args.target == "batch":
        problems += submit_batch.resubmit_problems(
            job_name=job_name, resubmit=args.resubmit, wait=args.wait, array_size=args.array_size
        )
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
        print_request(request, known)
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
        if not args.wait:
            return 0
        job = submit_sagemaker.follow(
            lambda n: _aws_call("sagemaker DescribeTrainingJob", submit_sagemaker.describe_training_job, client, n),
            name,
            sleep=time.sleep,
            log=_log,
            poll_seconds=args.poll_seconds,
        )
        error = submit_sagemaker.outcome_error(job)
        if error is not None:
            raise error
        return 0

    client = aws.client("batch", region=args.region)
    if args.image:
        request = with_image(client, args.job_definition, args.image, request, dry_run=args.dry_run, known=known)
        if args.dry_run:
            return 0
    with aws_errors("batch SubmitJob"):
        job_id = submit_batch.submit(client, request)
    print(job_id, flush=True)
    _log(f"submitted Batch job {job_name} ({job_id}) to queue {args.job_queue}")
    if not args.wait:
        return 0
    job = submit_batch.follow_and_resubmit(
        request,
        job_id,
        describe=lambda i: _aws_call("batch DescribeJobs", submit_batch.describe_job, client, i),
        submit=lambda r: _aws_call("batch SubmitJob", submit_batch.submit, client, r),
        limit=args.resubmit,
        announce=lambda i: print(i, flush=True),  # one line per job submitted; the last is the one that ran last
        sleep=time.sleep,
        log=_log,
        poll_seconds=args.poll_seconds,
    )
    if job["status"] == "FAILED":
        raise submit_batch.failure_error(job)
    return 0
