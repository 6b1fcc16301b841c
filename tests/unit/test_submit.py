"""The `finetune submit` request builders, flag checks and job following, without AWS.

Snapshots: the full requests are compared with JSON files under snapshots/. After a deliberate
change, regenerate them with `UPDATE_SNAPSHOTS=1 pytest tests/unit/test_submit.py` and review
the diff (never under CI: there a snapshot is compared, not written). Every request the builders
make here, and every snapshot, must also pass botocore's own validation of the API operation's
input (names, types, required members), as boto3 would check it before sending.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import re
from pathlib import Path

import pytest

from entrypoint.errors import EXIT_CODES, RETRY_RULES, UserError, WorldError
from entrypoint.reporting import STANDARD_METRICS, format_metrics
from entrypoint.submit import batch as submit_batch
from entrypoint.submit import command as submit
from entrypoint.submit import sagemaker as submit_sagemaker

SNAPSHOTS = Path(__file__).parent / "snapshots"
ROLE = "arn:aws:iam::123456789012:role/finetune-sagemaker"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/finetune:1.0"

SUBMIT_JOB = ("batch", "SubmitJob")
REGISTER_JOB_DEFINITION = ("batch", "RegisterJobDefinition")
CREATE_TRAINING_JOB = ("sagemaker", "CreateTrainingJob")
# Each snapshot and the API operation whose request it is.
SNAPSHOT_OPERATIONS = {
    "submit_job.json": SUBMIT_JOB,
    "register_job_definition.json": REGISTER_JOB_DEFINITION,
    "create_training_job.json": CREATE_TRAINING_JOB,
}


@functools.cache
def input_shape(operation: tuple[str, str]):
    import botocore.session

    service, name = operation
    return botocore.session.get_session().get_service_model(service).operation_model(name).input_shape


def valid(operation: tuple[str, str], request: dict) -> dict:
    """`request`, once botocore's parameter validation for `operation` accepts it (else it raises
    ParamValidationError naming every problem: unknown members, wrong types, missing required ones)."""
    from botocore.validate import validate_parameters

    validate_parameters(request, input_shape(operation))
    return request


def in_ci() -> bool:
    return bool(os.environ.get("CI") or os.environ.get("CODEBUILD_BUILD_ID"))


def assert_snapshot(name: str, value: dict) -> None:
    valid(SNAPSHOT_OPERATIONS[name], value)
    path = SNAPSHOTS / name
    text = json.dumps(value, indent=2, sort_keys=True) + "\n"
    if os.environ.get("UPDATE_SNAPSHOTS") == "1":
        if in_ci():
            pytest.fail("UPDATE_SNAPSHOTS=1 under CI: snapshots are rewritten by hand and reviewed, never by CI")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} is missing; create it with UPDATE_SNAPSHOTS=1 and review it"
    assert text == path.read_text(), f"{name} differs from the snapshot; if intended, rerun with UPDATE_SNAPSHOTS=1"


@pytest.mark.parametrize("name", sorted(p.name for p in SNAPSHOTS.glob("*.json")))
def test_every_snapshot_is_a_valid_request(name):
    assert name in SNAPSHOT_OPERATIONS, f"snapshots/{name}: which API operation's request is it?"
    valid(SNAPSHOT_OPERATIONS[name], json.loads((SNAPSHOTS / name).read_text()))


def test_request_validation_refuses_what_the_api_would():
    """Guards the guard: botocore's validation sees unknown members, wrong types and missing ones."""
    import botocore.exceptions

    request = {"jobName": "j", "jobQueue": "q", "jobDefinition": "d"}
    assert valid(SUBMIT_JOB, request) == request
    for bad in ({**request, "containerOverride": {}}, {**request, "timeout": 600}, {"jobName": "j"}):
        with pytest.raises(botocore.exceptions.ParamValidationError):
            valid(SUBMIT_JOB, bad)


@pytest.mark.parametrize("ci", [{"CI": "true"}, {"CODEBUILD_BUILD_ID": "finetune:1"}])
def test_snapshots_are_never_rewritten_under_ci(monkeypatch, ci):
    monkeypatch.setenv("UPDATE_SNAPSHOTS", "1")
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("CODEBUILD_BUILD_ID", raising=False)
    for key, value in ci.items():
        monkeypatch.setenv(key, value)
    path = SNAPSHOTS / "submit_job.json"
    before = path.read_text()
    with pytest.raises(pytest.fail.Exception, match="UPDATE_SNAPSHOTS=1 under CI"):
        assert_snapshot("submit_job.json", {"jobName": "j", "jobQueue": "q", "jobDefinition": "d"})
    assert path.read_text() == before


def sagemaker_request(**overrides) -> dict:
    kwargs = dict(
        job_name="finetune-20250102-030405-678",
        image=IMAGE,
        role_arn=ROLE,
        instance_type="ml.g5.xlarge",
        output_s3_uri="s3://my-bucket/jobs",
        settings={"FT_MODEL": "distilbert-base-uncased", "FT_LEARNING_RATE": "3e-5", "FT_NUM_TRAIN_EPOCHS": "2"},
        channels={"train": "s3://my-bucket/data/train", "eval": "s3://my-bucket/data/eval"},
        environment={"HF_HUB_OFFLINE": "1"},
        max_runtime_seconds=7200,
    )
    kwargs.update(overrides)
    return valid(CREATE_TRAINING_JOB, submit_sagemaker.build_create_training_job_request(**kwargs))


def batch_request(**overrides) -> dict:
    kwargs = dict(
        job_name="finetune-20250102-030405-678",
        job_queue="finetune-spot",
        job_definition="finetune:3",
        settings={"FT_MODEL": "distilbert-base-uncased", "FT_LEARNING_RATE": "3e-5"},
    )
    kwargs.update(overrides)
    return valid(SUBMIT_JOB, submit_batch.build_submit_job_request(**kwargs))


def derived_definition(described: dict, image: str) -> dict:
    return valid(REGISTER_JOB_DEFINITION, submit_batch.derive_job_definition(described, image))


def run_dry(argv: list[str], capsys, environ=None) -> dict:
    """The request `finetune submit ... --dry-run` prints, valid for the operation it is for."""
    assert submit.main([*argv, "--dry-run"], environ or {}) == 0
    request = json.loads(capsys.readouterr().out)
    return valid(SUBMIT_JOB if argv[0] == "batch" else CREATE_TRAINING_JOB, request)


SAGEMAKER_ARGV = [
    "sagemaker",
    "--image",
    IMAGE,
    "--role",
    ROLE,
    "--instance-type",
    "ml.g5.xlarge",
    "--output-s3-uri",
    "s3://my-bucket/jobs",
    "--job-name",
    "ft-test",
]
BATCH_ARGV = ["batch", "--job-queue", "q", "--job-definition", "d", "--job-name", "ft-test"]


# --- SageMaker -------------------------------------------------------------------------------


def test_sagemaker_request_matches_snapshot():
    assert_snapshot("create_training_job.json", sagemaker_request())


def test_spot_is_on_by_default_with_max_wait_twice_the_runtime():
    request = sagemaker_request()
    assert request["EnableManagedSpotTraining"] is True
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 7200, "MaxWaitTimeInSeconds": 14400}
    assert request["CheckpointConfig"] == {
        "S3Uri": "s3://my-bucket/jobs/finetune-20250102-030405-678/checkpoints",
        "LocalPath": "/opt/ml/checkpoints",
    }


def test_default_max_wait_stays_within_the_ceiling_and_at_least_the_runtime():
    ceiling = submit_sagemaker.MAX_RUNTIME_LIMIT_SECONDS
    request = sagemaker_request(max_runtime_seconds=ceiling - 10)
    assert request["StoppingCondition"]["MaxWaitTimeInSeconds"] == ceiling


def test_no_spot_sends_no_max_wait():
    request = sagemaker_request(spot=False)
    assert request["EnableManagedSpotTraining"] is False
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 7200}


def test_max_wait_below_runtime_is_refused_naming_both_flags():
    with pytest.raises(UserError, match=r"--max-wait-seconds \(3600\) must be at least --max-runtime-seconds \(7200\)"):
        sagemaker_request(max_wait_seconds=3600)
    assert sagemaker_request(max_wait_seconds=7200)["StoppingCondition"]["MaxWaitTimeInSeconds"] == 7200


def test_max_wait_without_spot_is_refused():
    with pytest.raises(UserError, match="--max-wait-seconds applies only to managed spot"):
        sagemaker_request(spot=False, max_wait_seconds=9000)


def test_explicit_checkpoint_uri_is_used():
    request = sagemaker_request(checkpoint_s3_uri="s3://ckpt-bucket/run-7")
    assert request["CheckpointConfig"]["S3Uri"] == "s3://ckpt-bucket/run-7"


def test_hyperparameters_are_lower_case_names_without_prefix_and_string_values():
    assert submit_sagemaker.hyperparameters({"FT_LEARNING_RATE": "3e-5", "FT_NUM_TRAIN_EPOCHS": "2"}) == {
        "learning_rate": "3e-5",
        "num_train_epochs": "2",
    }
    assert sagemaker_request()["HyperParameters"]["learning_rate"] == "3e-5"


def test_channels_are_fully_replicated_s3_prefixes():
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"] for c in sagemaker_request()["InputDataConfig"]}
    assert channels["train"] == {
        "S3DataType": "S3Prefix",
        "S3Uri": "s3://my-bucket/data/train",
        "S3DataDistributionType": "FullyReplicated",
    }
    assert "InputDataConfig" not in sagemaker_request(channels={})


@pytest.mark.parametrize(
    "overrides, flag",
    [
        ({"role_arn": "finetune-role"}, "--role"),
        ({"instance_type": "g5.xlarge"}, "--instance-type"),
        ({"output_s3_uri": "my-bucket/jobs"}, "--output-s3-uri"),
        ({"checkpoint_s3_uri": "/local/dir"}, "--checkpoint-s3-uri"),
        ({"channels": {"train": "https://example.com/x"}}, "--channel train"),
        ({"channels": {"tr ain": "s3://my-bucket/x"}}, "--channel tr ain"),
        ({"job_name": "a" * 64}, "--job-name"),
        ({"job_name": "under_score"}, "--job-name"),
        ({"instance_count": 0}, "--instance-count"),
        ({"volume_size_gb": 0}, "--volume-size-gb"),
        ({"environment": {"1BAD": "x"}}, "--env 1BAD"),
    ],
)
def test_bad_sagemaker_flags_are_user_errors_naming_the_flag(overrides, flag):
    with pytest.raises(UserError) as info:
        sagemaker_request(**overrides)
    assert str(info.value).startswith(flag)


def test_every_bad_flag_is_reported_at_once():
    with pytest.raises(UserError) as info:
        sagemaker_request(role_arn="r", instance_type="p3", instance_count=0)
    assert len(str(info.value).splitlines()) == 3


def test_default_job_name_is_a_valid_utc_timestamped_name():
    when = datetime.datetime(2025, 1, 2, 4, 4, 5, 678_900, tzinfo=datetime.timezone(datetime.timedelta(hours=1)))
    name = submit_sagemaker.default_job_name(when)
    assert name == "finetune-20250102-030405-678"
    assert submit_sagemaker.JOB_NAME_RE.match(name) and submit_batch.JOB_NAME_RE.match(name)


def test_metric_definitions_capture_a_real_metrics_line():
    line = format_metrics({"loss": 0.6931, "eval_accuracy": 0.8125, "eval_loss": 0.5, "epoch": 1.0})
    definitions = {d["Name"]: d["Regex"] for d in sagemaker_request()["AlgorithmSpecification"]["MetricDefinitions"]}
    assert set(definitions) == set(STANDARD_METRICS)
    found = {name: re.search(regex, line) for name, regex in definitions.items()}
    assert float(found["loss"].group(1)) == 0.6931  # not eval_loss's 0.5
    assert float(found["eval_accuracy"].group(1)) == 0.8125
    assert float(found["eval_loss"].group(1)) == 0.5
    assert found["grad_norm"] is None


# --- Batch -----------------------------------------------------------------------------------


def test_batch_request_matches_snapshot():
    request = batch_request(environment={"HF_HUB_OFFLINE": "1"}, array_size=4, gpus=1, timeout_seconds=3600, attempts=3)
    assert_snapshot("submit_job.json", request)


def test_batch_minimal_request_keeps_the_definitions_retry_and_resources():
    request = batch_request()
    assert set(request) == {"jobName", "jobQueue", "jobDefinition", "containerOverrides"}
    assert request["containerOverrides"] == {
        "environment": [
            {"name": "FT_LEARNING_RATE", "value": "3e-5"},
            {"name": "FT_MODEL", "value": "distilbert-base-uncased"},
        ]
    }


def test_attempts_override_carries_the_exit_code_rules():
    rules = batch_request(attempts=5)["retryStrategy"]["evaluateOnExit"]
    assert len(rules) == len(RETRY_RULES)
    assert {"action": "EXIT", "onExitCode": "64"} in rules
    assert {"action": "RETRY", "onStatusReason": "Host EC2*"} in rules
    assert all(set(rule) <= {"action", "onExitCode", "onStatusReason", "onReason"} for rule in rules)


@pytest.mark.parametrize(
    "overrides, flag",
    [
        ({"array_size": 1}, "--array-size"),
        ({"array_size": 10_001}, "--array-size"),
        ({"gpus": 0}, "--gpus"),
        ({"timeout_seconds": 30}, "--timeout-seconds"),
        ({"attempts": 11}, "--attempts"),
        ({"job_name": "-leading-dash"}, "--job-name"),
        ({"environment": {"AWS_BATCH_JOB_ID": "x"}}, "--env AWS_BATCH_JOB_ID"),
    ],
)
def test_bad_batch_flags_are_user_errors_naming_the_flag(overrides, flag):
    with pytest.raises(UserError) as info:
        batch_request(**overrides)
    assert str(info.value).startswith(flag)


JOB_ROLE = "arn:aws:iam::123456789012:role/finetune-batch-job"
DEFINITION_ARN = "arn:aws:batch:us-east-1:123456789012:job-definition/finetune:3"


def described_definition(**overrides) -> dict:
    """A DescribeJobDefinitions entry shaped like the one the Terraform module registers."""
    described = {
        "jobDefinitionName": "finetune",
        "jobDefinitionArn": DEFINITION_ARN,
        "revision": 3,
        "status": "ACTIVE",
        "type": "container",
        "parameters": {},
        "containerOrchestrationType": "ECS",
        "platformCapabilities": ["EC2"],
        "propagateTags": True,
        "tags": {"Project": "finetune"},
        "timeout": {"attemptDurationSeconds": 86400},
        "retryStrategy": {"attempts": 5, "evaluateOnExit": submit_batch.evaluate_on_exit()},
        "containerProperties": {
            "image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/finetune:main",
            "jobRoleArn": JOB_ROLE,
            "environment": [{"name": "FT_MODEL", "value": "s3://b/models/minilm/"}],
            "resourceRequirements": [
                {"type": "GPU", "value": "1"},
                {"type": "VCPU", "value": "4"},
                {"type": "MEMORY", "value": "14336"},
            ],
            "linuxParameters": {"sharedMemorySize": 2048},
            "logConfiguration": {"logDriver": "awslogs", "options": {"awslogs-group": "/aws/batch/finetune"}},
            "mountPoints": [],
            "volumes": [],
            "ulimits": [],
            "secrets": [],
        },
    }
    described.update(overrides)
    return described


def test_derived_definition_matches_snapshot():
    assert_snapshot("register_job_definition.json", submit_batch.derive_job_definition(described_definition(), IMAGE))


def test_derived_definition_changes_only_the_image_and_drops_read_only_fields():
    described = described_definition()
    request = derived_definition(described, IMAGE)
    assert request["containerProperties"]["image"] == IMAGE
    assert described["containerProperties"]["image"].endswith(":main"), "the description is left as it was"
    assert set(described) - set(request) == {"jobDefinitionArn", "revision", "status", "containerOrchestrationType"}
    for key in (
        "jobDefinitionName",
        "type",
        "retryStrategy",
        "timeout",
        "tags",
        "propagateTags",
        "platformCapabilities",
    ):
        assert request[key] == described[key], key
    container, before = request["containerProperties"], described["containerProperties"]
    assert {k: v for k, v in container.items() if k != "image"} == {k: v for k, v in before.items() if k != "image"}
    assert container["jobRoleArn"] == JOB_ROLE


@pytest.mark.parametrize("kind", ["nodeProperties", "eksProperties"])
def test_image_of_a_definition_without_container_properties_is_refused(kind):
    described = described_definition(**{kind: {}})
    del described["containerProperties"]
    with pytest.raises(UserError, match=f"single-container job definitions; {DEFINITION_ARN} has {kind}"):
        submit_batch.derive_job_definition(described, IMAGE)


@pytest.mark.parametrize("image", ["", "finetune: 1", " finetune:1"])
def test_blank_or_spaced_image_is_refused(image):
    with pytest.raises(UserError, match="--image"):
        submit_batch.derive_job_definition(described_definition(), image)


@pytest.mark.parametrize(
    "reference, expected",
    [
        ("finetune", ("finetune", None)),
        ("finetune:12", ("finetune", 12)),
        (DEFINITION_ARN, ("finetune", 3)),
        ("arn:aws:batch:us-east-1:123456789012:job-definition/finetune", ("finetune", None)),
    ],
)
def test_job_definition_references_split_into_name_and_revision(reference, expected):
    assert submit_batch.split_job_definition(reference) == expected


def test_a_bare_name_picks_the_latest_active_revision_and_a_revision_picks_itself():
    revisions = [
        described_definition(revision=r, status=s, jobDefinitionArn=f"arn:...:finetune:{r}")
        for r, s in [(1, "INACTIVE"), (4, "INACTIVE"), (2, "ACTIVE"), (3, "ACTIVE")]
    ]
    others = [described_definition(jobDefinitionName="finetune-multinode", revision=9)]
    assert submit_batch.pick_job_definition(revisions + others, "finetune")["revision"] == 3
    assert submit_batch.pick_job_definition(revisions + others, "finetune:4")["revision"] == 4
    with pytest.raises(UserError, match="found no revision 7 of finetune"):
        submit_batch.pick_job_definition(revisions, "finetune:7")
    with pytest.raises(UserError, match="found no ACTIVE revision of finetune"):
        submit_batch.pick_job_definition(revisions[:2], "finetune")


class FakeDefinitions:
    """describe_job_definitions (through its paginator) and register_job_definition over a list."""

    def __init__(self, definitions):
        self.definitions = list(definitions)
        self.registered = []

    def get_paginator(self, operation):
        assert operation == "describe_job_definitions"
        return self

    def paginate(self, jobDefinitionName):
        mine = [d for d in self.definitions if d["jobDefinitionName"] == jobDefinitionName]
        return [{"jobDefinitions": mine[:1]}, {"jobDefinitions": mine[1:]}]

    def register_job_definition(self, **request):
        revision = max(d["revision"] for d in self.definitions) + 1
        arn = f"arn:aws:batch:us-east-1:123456789012:job-definition/{request['jobDefinitionName']}:{revision}"
        self.registered.append(valid(REGISTER_JOB_DEFINITION, request))
        self.definitions.append({**request, "revision": revision, "status": "ACTIVE", "jobDefinitionArn": arn})
        return {"jobDefinitionArn": arn, "jobDefinitionName": request["jobDefinitionName"], "revision": revision}


def test_with_image_registers_a_revision_and_points_the_request_at_it(capsys):
    client = FakeDefinitions(
        [described_definition(revision=2, jobDefinitionArn="arn:...:finetune:2"), described_definition()]
    )
    request = submit.with_image(client, "finetune", IMAGE, batch_request(job_definition="finetune"), dry_run=False)
    valid(SUBMIT_JOB, request)
    new_arn = "arn:aws:batch:us-east-1:123456789012:job-definition/finetune:4"
    assert request["jobDefinition"] == new_arn
    assert client.registered == [submit_batch.derive_job_definition(described_definition(), IMAGE)]
    assert new_arn in capsys.readouterr().err

    again = submit.with_image(client, "finetune", IMAGE, batch_request(job_definition="finetune"), dry_run=False)
    assert again["jobDefinition"] == new_arn and len(client.registered) == 1, "a revision that runs it is reused"


def test_with_image_dry_run_prints_both_requests_and_registers_nothing(capsys):
    client = FakeDefinitions([described_definition()])
    submit.with_image(client, DEFINITION_ARN, IMAGE, batch_request(job_definition=DEFINITION_ARN), dry_run=True)
    printed = json.loads(capsys.readouterr().out)
    valid(REGISTER_JOB_DEFINITION, printed["RegisterJobDefinition"])
    valid(SUBMIT_JOB, printed["SubmitJob"])
    assert client.registered == []
    assert printed["RegisterJobDefinition"] == submit_batch.derive_job_definition(described_definition(), IMAGE)
    assert printed["SubmitJob"]["jobDefinition"].startswith("<jobDefinitionArn")
    assert printed["SubmitJob"]["containerOverrides"] == batch_request()["containerOverrides"]


def failed_job(exit_code, **extra):
    return {
        "jobId": "j-1",
        "jobName": "ft",
        "status": "FAILED",
        "statusReason": "Essential container in task exited",
        "attempts": [{"container": {"exitCode": exit_code, "logStreamName": "finetune/default/abc"}}],
        **extra,
    }


def test_failed_job_with_exit_64_is_a_user_error():
    error = submit_batch.failure_error(failed_job(64))
    assert isinstance(error, UserError)
    assert "exit code 64" in str(error) and "finetune/default/abc" in str(error)


@pytest.mark.parametrize("exit_code", [75, 143, 1, None])
def test_failed_job_with_other_exit_codes_is_a_world_error(exit_code):
    assert isinstance(submit_batch.failure_error(failed_job(exit_code)), WorldError)


def test_follow_logs_each_transition_once_and_stops_at_a_terminal_status():
    statuses = iter(["SUBMITTED", "RUNNABLE", "RUNNABLE", "RUNNING", "SUCCEEDED", "never reached"])
    logged, slept = [], []
    job = submit_batch.follow(
        lambda job_id: {"jobId": job_id, "status": next(statuses)},
        "j-1",
        sleep=slept.append,
        log=logged.append,
        poll_seconds=7,
    )
    assert job["status"] == "SUCCEEDED"
    assert logged == ["j-1: SUBMITTED", "j-1: RUNNABLE", "j-1: RUNNING", "j-1: SUCCEEDED"]
    assert slept == [7, 7, 7, 7]


class FakeBatch:
    """describe_jobs/list_jobs over a dict of job descriptions."""

    def __init__(self, jobs):
        self.jobs = jobs

    def describe_jobs(self, jobs):
        return {"jobs": [self.jobs[j] for j in jobs if j in self.jobs]}

    def list_jobs(self, arrayJobId, jobStatus):
        return {
            "jobSummaryList": [
                {"jobId": k}
                for k, v in self.jobs.items()
                if k.startswith(arrayJobId + ":") and v["status"] == jobStatus
            ]
        }


def test_failed_array_job_reports_its_failed_childs_exit_code():
    parent = {
        "jobId": "p",
        "jobName": "ft",
        "status": "FAILED",
        "attempts": [],
        "arrayProperties": {"size": 2, "statusSummary": {"FAILED": 1, "SUCCEEDED": 1}},
    }
    client = FakeBatch(
        {"p": parent, "p:0": {**failed_job(0), "status": "SUCCEEDED"}, "p:1": {**failed_job(64), "jobId": "p:1"}}
    )
    job = submit_batch.describe_job(client, "p")
    assert job["jobId"] == "p:1"
    assert isinstance(submit_batch.failure_error(job), UserError)


def _client_error(code: str):
    import botocore.exceptions

    return botocore.exceptions.ClientError({"Error": {"Code": code, "Message": "m"}}, "CreateTrainingJob")


@pytest.mark.parametrize(
    "code, family, verb",
    [
        ("ValidationException", UserError, "was refused"),
        ("ResourceInUse", UserError, "was refused"),
        ("ClientException", UserError, "was refused"),
        ("ThrottlingException", WorldError, "failed"),
        ("ServerException", WorldError, "failed"),
        ("InternalFailure", WorldError, "failed"),
    ],
)
def test_refused_requests_are_user_errors_and_service_failures_world_errors(code, family, verb):
    with (
        pytest.raises(family, match=f"sagemaker CreateTrainingJob {verb}: {code}"),
        submit.aws_errors("sagemaker CreateTrainingJob"),
    ):
        raise _client_error(code)


# --- the command line ------------------------------------------------------------------------


def test_unknown_setting_gets_a_did_you_mean_naming_the_flag(capsys):
    with pytest.raises(UserError) as info:
        run_dry([*BATCH_ARGV, "--set", "FT_LEARNING_RTE=3e-5"], capsys)
    assert "--set FT_LEARNING_RTE" in str(info.value) and "FT_LEARNING_RATE" in str(info.value)


def test_settings_problems_and_flag_problems_are_reported_together(capsys):
    with pytest.raises(UserError) as info:
        run_dry([*BATCH_ARGV, "--set", "learning_rate=1", "--env", "FT_MODEL=x", "--array-size", "1"], capsys)
    message = str(info.value)
    assert "3 problem(s)" in message
    assert "did you mean FT_LEARNING_RATE?" in message
    assert "--env FT_MODEL: FT_* names are settings; pass them with --set" in message
    assert "--array-size" in message


@pytest.mark.parametrize("argv", [["--set", "AWS_SECRET_ACCESS_KEY=x"], ["--env", "AWS_ACCESS_KEY_ID=x"]])
def test_credentials_are_refused(argv, capsys):
    with pytest.raises(UserError, match="IAM role"):
        run_dry([*BATCH_ARGV, *argv], capsys)


def test_env_file_then_set_with_later_values_winning(tmp_path, capsys):
    env_file = tmp_path / "job.env"
    env_file.write_text(
        "# a sweep's base\n\nFT_MODEL=distilbert-base-uncased\nFT_LEARNING_RATE=1e-4\n"
        "FT_TRAIN_DATA\nFT_EVAL_DATA=s3://b/eval.jsonl # not a comment\n"
    )
    request = run_dry(
        [*SAGEMAKER_ARGV, "--env-file", str(env_file), "--set", "FT_LEARNING_RATE=3e-5"],
        capsys,
        environ={"FT_TRAIN_DATA": "s3://b/train.jsonl"},
    )
    assert request["HyperParameters"] == {
        "model": "distilbert-base-uncased",
        "learning_rate": "3e-5",
        "train_data": "s3://b/train.jsonl",
        "eval_data": "s3://b/eval.jsonl # not a comment",
    }


def test_env_file_bare_name_not_in_the_shell_is_refused_with_its_line(tmp_path, capsys):
    env_file = tmp_path / "job.env"
    env_file.write_text("FT_MODEL=x\nFT_TRAIN_DATA\n")
    with pytest.raises(UserError, match=r"line 2: FT_TRAIN_DATA has no value"):
        run_dry([*BATCH_ARGV, "--env-file", str(env_file)], capsys)


def test_missing_env_file_is_a_user_error(tmp_path, capsys):
    with pytest.raises(UserError, match="--env-file .*cannot read"):
        run_dry([*BATCH_ARGV, "--env-file", str(tmp_path / "nope.env")], capsys)


def test_duplicate_channel_is_refused(capsys):
    with pytest.raises(UserError, match="--channel: each channel name once"):
        run_dry([*SAGEMAKER_ARGV, "--channel", "train=s3://b/a", "--channel", "train=s3://b/b"], capsys)


def test_cli_flags_reach_the_sagemaker_request(capsys):
    request = run_dry(
        [
            *SAGEMAKER_ARGV,
            "--no-spot",
            "--channel",
            "train=s3://my-bucket/train",
            "--env",
            "HF_HUB_OFFLINE=1",
            "--set",
            "FT_NUM_TRAIN_EPOCHS=3",
            "--instance-count",
            "2",
            "--max-runtime-seconds",
            "600",
        ],
        capsys,
    )
    assert request["EnableManagedSpotTraining"] is False
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 600}
    assert request["ResourceConfig"]["InstanceCount"] == 2
    assert request["Environment"] == {"HF_HUB_OFFLINE": "1"}
    assert request["HyperParameters"] == {"num_train_epochs": "3"}


def test_cli_flags_reach_the_batch_request(capsys):
    request = run_dry(
        [*BATCH_ARGV, "--array-size", "3", "--gpus", "2", "--timeout-seconds", "600", "--set", "FT_SEED=7"], capsys
    )
    assert request["arrayProperties"] == {"size": 3}
    assert request["containerOverrides"]["resourceRequirements"] == [{"type": "GPU", "value": "2"}]
    assert request["containerOverrides"]["environment"] == [{"name": "FT_SEED", "value": "7"}]
    assert request["timeout"] == {"attemptDurationSeconds": 600}
    assert "retryStrategy" not in request


def test_default_job_name_is_used_when_none_is_given(capsys):
    request = run_dry(["batch", "--job-queue", "q", "--job-definition", "d"], capsys)
    assert re.fullmatch(r"finetune-\d{8}-\d{6}-\d{3}", request["jobName"])


# --- secrets ---------------------------------------------------------------------------------

SECRET = "hf_PLANTEDsubmitToken3"
SECRET_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:hf-token-AbCdEf"


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--set", f"FT_HUB_TOKEN={SECRET}"], "--set FT_HUB_TOKEN"),
        (["--env", f"HF_TOKEN={SECRET}"], "--env HF_TOKEN"),
        (["--env", f"WANDB_API_KEY={SECRET}"], "--env WANDB_API_KEY"),
        (["--env", f"DB_PASSWORD={SECRET}"], "--env DB_PASSWORD"),
        (["--env", f"GITHUB_CLIENT_SECRET={SECRET}"], "--env GITHUB_CLIENT_SECRET"),
        (["--env", f"SSH_PRIVATE_KEY={SECRET}"], "--env SSH_PRIVATE_KEY"),
        (["--env", f"GOOGLE_CREDENTIALS={SECRET}"], "--env GOOGLE_CREDENTIALS"),
    ],
)
@pytest.mark.parametrize("target", ["batch", "sagemaker"])
def test_secret_looking_names_are_refused_with_the_way_to_pass_them(argv, named, target, capsys):
    with pytest.raises(UserError) as info:
        run_dry([*(BATCH_ARGV if target == "batch" else SAGEMAKER_ARGV), *argv], capsys)
    message = str(info.value)
    assert f"{named}: the name says it holds a secret" in message and "--set FT_SECRETS=" in message
    assert "DescribeJobs, DescribeTrainingJob" in message and info.value.exit_code == 64
    assert SECRET not in message + json.dumps(capsys.readouterr())
    if named == "--set FT_HUB_TOKEN":
        assert "--set FT_SECRETS=HF_TOKEN=arn:aws:secretsmanager:" in message


def test_secret_looking_names_in_an_env_file_or_a_config_file_are_refused(tmp_path, capsys):
    env_file = tmp_path / "job.env"
    env_file.write_text("FT_MODEL=m\nHF_TOKEN\n")
    config = tmp_path / "job.yaml"
    config.write_text(f"model: m\nhub_token: {SECRET}\n")
    with pytest.raises(UserError) as info:
        run_dry(
            [*BATCH_ARGV, "--env-file", str(env_file), "--config", str(config)], capsys, environ={"HF_TOKEN": SECRET}
        )
    message = str(info.value)
    assert f"--env-file {env_file}: HF_TOKEN: the name says it holds a secret" in message
    assert f"--config {config}: FT_HUB_TOKEN: the name says it holds a secret" in message
    assert SECRET not in message


def test_names_with_token_as_a_word_part_are_not_refused(capsys):
    request = run_dry([*BATCH_ARGV, "--set", "FT_AVERAGE_TOKENS_ACROSS_DEVICES=true"], capsys)
    assert request["containerOverrides"]["environment"] == [
        {"name": "FT_AVERAGE_TOKENS_ACROSS_DEVICES", "value": "true"}
    ]


def test_ft_secrets_travels_as_arns_and_a_value_in_its_place_is_refused_unshown(capsys):
    request = run_dry([*SAGEMAKER_ARGV, "--set", f"FT_SECRETS=HF_TOKEN={SECRET_ARN}"], capsys)
    assert request["HyperParameters"] == {"secrets": f"HF_TOKEN={SECRET_ARN}"}
    with pytest.raises(UserError) as info:
        run_dry([*SAGEMAKER_ARGV, "--set", f"FT_SECRETS=HF_TOKEN={SECRET}"], capsys)
    assert "--set FT_SECRETS: HF_TOKEN: expected the ARN" in str(info.value) and SECRET not in str(info.value)


@pytest.mark.parametrize(
    "argv",
    [
        ["--set", "FT_MODEL=https://user:hunter2pass@models.example/tiny"],
        ["--env", f"INNOCENT_NAME=prefix-{SECRET}"],
    ],
)
def test_a_secret_under_an_innocent_name_is_refused_unshown(argv, capsys):
    with pytest.raises(UserError, match="the value holds a secret") as info:
        run_dry([*BATCH_ARGV, *argv], capsys, environ={"HF_TOKEN": SECRET})
    assert SECRET not in str(info.value) and "hunter2pass" not in str(info.value)


def test_dry_run_of_a_definition_with_a_secret_in_its_environment_prints_it_redacted(capsys):
    environment = [{"name": "FT_MODEL", "value": "s3://b/m/"}, {"name": "HF_TOKEN", "value": SECRET}]
    described = described_definition()
    described["containerProperties"]["environment"] = environment
    client = FakeDefinitions([described])
    submit.with_image(client, DEFINITION_ARN, IMAGE, batch_request(job_definition=DEFINITION_ARN), dry_run=True)
    out = capsys.readouterr().out
    printed = json.loads(out)
    assert SECRET not in out
    assert printed["RegisterJobDefinition"]["containerProperties"]["environment"][1] == {
        "name": "HF_TOKEN",
        "value": "(redacted)",
    }


# --- the retry budget: --resubmit (Batch) and --wait (SageMaker) ----------------------------

HOST_TERMINATED = "Host EC2 (instance i-0a1b2c3d4e5f67890) terminated."
CONTAINER_EXITED = "Essential container in task exited"
JOB_QUEUE_ARN = "arn:aws:batch:us-east-1:123456789012:job-queue/finetune-spot"


def batch_attempt(exit_code: int | None, reason: str = CONTAINER_EXITED, index: int = 0) -> dict:
    """One entry of DescribeJobs' `attempts`, as Batch reports it. A host that went away (a spot
    reclaim) leaves no exit code, only the status reason."""
    task = f"arn:aws:ecs:us-east-1:123456789012:task/finetune-spot_Batch_5e1f/0c4d{index:04d}"
    container = {
        "containerInstanceArn": "arn:aws:ecs:us-east-1:123456789012:container-instance/finetune-spot_Batch_5e1f/9f3e",
        "taskArn": task,
        "logStreamName": f"finetune/default/0c4d{index:04d}",
        "networkInterfaces": [],
    }
    if exit_code is not None:
        container["exitCode"] = exit_code
    started = 1_735_790_000_000 + index * 3_600_000
    return {"container": container, "startedAt": started, "stoppedAt": started + 3_000_000, "statusReason": reason}


def described_job(attempts: list[dict], *, allowed: int | None = 10, status: str = "FAILED", **extra) -> dict:
    """A DescribeJobs entry for a job of the Terraform module's definition (retryStrategy with the
    project's rules) that ended after `attempts`."""
    last = attempts[-1] if attempts else {"container": {}, "statusReason": "Dependent Job failed"}
    job = {
        "jobArn": "arn:aws:batch:us-east-1:123456789012:job/8c5b7e1a-0d2f-4c1e-9a57-3f0b6d1c2e4a",
        "jobName": "ft-long",
        "jobId": "8c5b7e1a-0d2f-4c1e-9a57-3f0b6d1c2e4a",
        "jobQueue": JOB_QUEUE_ARN,
        "status": status,
        "statusReason": last["statusReason"],
        "attempts": attempts,
        "createdAt": 1_735_789_000_000,
        "startedAt": attempts[0]["startedAt"] if attempts else None,
        "stoppedAt": last.get("stoppedAt"),
        "dependsOn": [],
        "jobDefinition": DEFINITION_ARN,
        "parameters": {},
        "container": {
            "image": IMAGE,
            "jobRoleArn": JOB_ROLE,
            "environment": [{"name": "FT_OUTPUT_URI", "value": "s3://b/runs/long/"}],
            **({"exitCode": last["container"]["exitCode"]} if "exitCode" in last["container"] else {}),
            "logStreamName": last["container"].get("logStreamName"),
        },
        "timeout": {"attemptDurationSeconds": 86400},
        "tags": {"Project": "finetune"},
        "platformCapabilities": ["EC2"],
        "eksAttempts": [],
    }
    if allowed is not None:
        job["retryStrategy"] = {"attempts": allowed, "evaluateOnExit": submit_batch.evaluate_on_exit()}
    job.update(extra)
    return job


def spot_worn(last: dict, allowed: int = 10) -> dict:
    """A job whose every attempt but the last was a spot interruption (exit 143), and whose last is `last`."""
    return described_job([batch_attempt(143, index=i) for i in range(allowed - 1)] + [last], allowed=allowed)


@pytest.mark.parametrize(
    "last, how",
    [
        (batch_attempt(143, index=9), "was interrupted (exit code 143, INTERRUPTED)"),
        (batch_attempt(75, index=9), "was interrupted (exit code 75, WORLD_ERROR)"),
        (batch_attempt(None, HOST_TERMINATED, index=9), "lost its host, a spot reclaim (no exit code)"),
        (batch_attempt(137, HOST_TERMINATED, index=9), "lost its host, a spot reclaim (exit code 137, KILLED)"),
    ],
)
def test_a_job_out_of_attempts_while_interrupted_is_resubmitted(last, how):
    decision = submit_batch.resubmission(spot_worn(last), resubmitted=0, limit=2)
    assert decision.resubmit and decision.eligible
    assert "ft-long (8c5b7e1a-0d2f-4c1e-9a57-3f0b6d1c2e4a) used all 10 of its 10 attempt(s)" in decision.reason
    assert f"the last {how}: {last['statusReason']}" in decision.reason
    assert "Resubmitting it (1 of 2) with the same settings" in decision.reason


def test_a_job_without_a_retry_strategy_has_one_attempt_to_use():
    assert submit_batch.resubmission(described_job([batch_attempt(143)], allowed=None), 0, 1).resubmit
    assert not submit_batch.resubmission(described_job([batch_attempt(143)], allowed=None), 1, 1).resubmit


@pytest.mark.parametrize("doc", [doc for doc in EXIT_CODES if doc.code != 0], ids=lambda doc: doc.name)
def test_exactly_the_exit_codes_the_table_retries_are_resubmitted(doc):
    """The exit-code table decides: a retried code is resubmitted, any other never (64, 1, ...)."""
    decision = submit_batch.resubmission(spot_worn(batch_attempt(doc.code, index=9)), resubmitted=0, limit=3)
    assert decision.resubmit is doc.retried, decision.reason
    if not doc.retried:
        assert f"exit code {doc.code}, {doc.name}" in decision.reason


@pytest.mark.parametrize("code", [64, 1])
def test_a_user_error_or_a_bug_is_never_resubmitted_even_when_the_host_went_away(code):
    decision = submit_batch.resubmission(spot_worn(batch_attempt(code, HOST_TERMINATED, index=9)), 0, 3)
    assert not decision.resubmit and not decision.eligible
    assert f"FAILED with exit code {code}" in decision.reason and "rerunning cannot fix it" in decision.reason


def test_an_oom_kill_is_not_resubmitted():
    oom = batch_attempt(137, "OutOfMemoryError: Container killed due to memory usage")
    decision = submit_batch.resubmission(described_job([oom]), 0, 3)
    assert not decision.resubmit and "exit code 137, KILLED, which is not retried" in decision.reason


@pytest.mark.parametrize(
    "attempts",
    [
        # The attempt timeout: Batch sends SIGTERM (the job checkpoints and exits 143) and never retries it.
        [batch_attempt(143, index=0), batch_attempt(143, "Job attempt duration exceeded timeout", index=1)],
        # TerminateJob (e.g. CI cancelled): the container is stopped the same way, also never retried.
        [batch_attempt(143, "Terminated by CI", index=0)],
    ],
)
def test_a_job_batch_stopped_before_its_attempts_ran_out_is_not_resubmitted(attempts):
    decision = submit_batch.resubmission(described_job(attempts, allowed=10), 0, 3)
    assert not decision.resubmit and not decision.eligible
    assert f"FAILED after {len(attempts)} of its 10 attempt(s), so Batch stopped it on purpose" in decision.reason


def test_the_limit_counts_the_resubmissions_so_far():
    job = spot_worn(batch_attempt(None, HOST_TERMINATED, index=9))
    assert submit_batch.resubmission(job, resubmitted=1, limit=2).resubmit
    used_up = submit_batch.resubmission(job, resubmitted=2, limit=2)
    assert not used_up.resubmit and used_up.eligible and "--resubmit 2 is used up" in used_up.reason
    default = submit_batch.resubmission(job, resubmitted=0, limit=0)
    assert not default.resubmit and "--resubmit N would submit it again" in default.reason


@pytest.mark.parametrize(
    "job",
    [
        described_job([batch_attempt(0)], status="SUCCEEDED"),
        described_job([], statusReason="Dependent Job failed"),  # failed before any attempt ran
    ],
)
def test_a_job_that_succeeded_or_never_ran_is_not_resubmitted(job):
    assert not submit_batch.resubmission(job, 0, 5).resubmit


class FakeBatchRuns:
    """submit_job/describe_jobs for single jobs: the Nth job submitted is RUNNING once, then ends
    as `endings[N]` describes it (a function of the job's name and id)."""

    def __init__(self, endings):
        self.endings = list(endings)
        self.submitted: list[dict] = []
        self.described: dict[str, list[dict]] = {}

    def submit_job(self, **request):
        self.submitted.append(valid(SUBMIT_JOB, request))
        job_id = f"job-{len(self.submitted)}"
        running = {"jobId": job_id, "jobName": request["jobName"], "status": "RUNNING"}
        ending = self.endings[len(self.submitted) - 1](request["jobName"], job_id)
        self.described[job_id] = [running, ending]
        return {"jobId": job_id, "jobName": request["jobName"], "jobArn": f"arn:...:job/{job_id}"}

    def describe_jobs(self, jobs):
        return {
            "jobs": [self.described[j].pop(0) if len(self.described[j]) > 1 else self.described[j][0] for j in jobs]
        }


def ended(last: dict | None):
    """An ending for FakeBatchRuns: SUCCEEDED with None, else FAILED after 10 attempts, the last `last`."""

    def ending(name, job_id):
        job = spot_worn(last) if last else described_job([batch_attempt(0)], status="SUCCEEDED")
        return {**job, "jobName": name, "jobId": job_id}

    return ending


def run_resubmitting(client, limit: int, request: dict | None = None):
    request = request or batch_request(job_name="ft-long", attempts=10)
    first = submit_batch.submit(client, request)
    logged, announced = [], []
    job = submit_batch.follow_and_resubmit(
        request,
        first,
        describe=lambda i: submit_batch.describe_job(client, i),
        submit=lambda r: submit_batch.submit(client, r),
        limit=limit,
        announce=announced.append,
        sleep=lambda s: None,
        log=logged.append,
        poll_seconds=0,
    )
    return job, announced, logged


def test_follow_and_resubmit_resumes_until_the_job_succeeds():
    client = FakeBatchRuns(
        [ended(batch_attempt(143, index=9)), ended(batch_attempt(None, HOST_TERMINATED)), ended(None)]
    )
    job, announced, logged = run_resubmitting(client, limit=3)
    assert job["status"] == "SUCCEEDED" and job["jobId"] == "job-3"
    original, *again = client.submitted
    assert [r["jobName"] for r in again] == ["ft-long-r1", "ft-long-r2"]
    assert all({**r, "jobName": "ft-long"} == original for r in again), "the same settings, queue and definition"
    assert announced == ["job-2", "job-3"]
    resubmitted = [line for line in logged if "Resubmitting" in line]
    assert len(resubmitted) == 2
    assert "ft-long (job-1) used all 10 of its 10 attempt(s); the last was interrupted (exit code 143" in resubmitted[0]
    assert resubmitted[0].endswith(
        f"{CONTAINER_EXITED}. Resubmitting it (1 of 3) with the same settings, to resume "
        "from its newest durable checkpoint: submitted ft-long-r1 (job-2)"
    )
    assert "ft-long-r1 (job-2) used all 10 of its 10 attempt(s); the last lost its host" in resubmitted[1]
    assert HOST_TERMINATED in resubmitted[1] and resubmitted[1].endswith("submitted ft-long-r2 (job-3)")


def test_follow_and_resubmit_stops_at_the_limit_and_fails_as_before():
    client = FakeBatchRuns([ended(batch_attempt(143, index=9))] * 3)
    job, announced, logged = run_resubmitting(client, limit=1)
    assert job["status"] == "FAILED" and announced == ["job-2"] and len(client.submitted) == 2
    assert logged[-1].startswith("not resubmitted: Batch job ft-long-r1 (job-2) used all 10")
    assert logged[-1].endswith("--resubmit 1 is used up (to resume from its newest durable checkpoint)")
    assert isinstance(submit_batch.failure_error(job), WorldError)


def test_follow_and_resubmit_never_resubmits_a_user_error():
    client = FakeBatchRuns(
        [lambda name, job_id: {**described_job([batch_attempt(64)]), "jobName": name, "jobId": job_id}]
    )
    job, announced, logged = run_resubmitting(client, limit=3)
    assert announced == [] and len(client.submitted) == 1
    assert "not resubmitted: Batch job ft-long (job-1) FAILED with exit code 64, USER_ERROR" in logged[-1]
    assert isinstance(submit_batch.failure_error(job), UserError)


def test_without_resubmit_a_job_out_of_attempts_says_how_to_resubmit_it():
    client = FakeBatchRuns([ended(batch_attempt(143, index=9))])
    job, announced, logged = run_resubmitting(client, limit=0)
    assert announced == [] and job["status"] == "FAILED"
    assert logged[-1].startswith("not resubmitted:") and "--resubmit N would submit it again" in logged[-1]


@pytest.mark.parametrize(
    "argv, problem",
    [
        (["--resubmit", "2"], "--resubmit needs --wait"),
        (["--wait", "--resubmit", "-1"], "--resubmit must be 0"),
        (["--wait", "--resubmit", "2", "--array-size", "3"], "--resubmit works with single jobs, not --array-size"),
        (["--wait", "--resubmit", "10", "--job-name", "a" * 125], "is too long for --resubmit 10"),
    ],
)
def test_bad_resubmit_flags_are_refused_before_anything_is_sent(argv, problem, capsys):
    with pytest.raises(UserError, match=problem):
        run_dry([*BATCH_ARGV, *argv], capsys)


def test_resubmit_leaves_the_first_request_as_it_was(capsys):
    assert run_dry([*BATCH_ARGV, "--wait", "--resubmit", "3"], capsys) == run_dry(BATCH_ARGV, capsys)


def training_job(status: str, secondary: str, **extra) -> dict:
    """A DescribeTrainingJob response for a managed spot job of sagemaker_request()'s shape."""
    job = {
        "TrainingJobName": "ft-spot",
        "TrainingJobArn": "arn:aws:sagemaker:us-east-1:123456789012:training-job/ft-spot",
        "TrainingJobStatus": status,
        "SecondaryStatus": secondary,
        "StoppingCondition": {"MaxRuntimeInSeconds": 7200, "MaxWaitTimeInSeconds": 14400},
        "EnableManagedSpotTraining": True,
        "CheckpointConfig": {"S3Uri": "s3://my-bucket/jobs/ft-spot/checkpoints", "LocalPath": "/opt/ml/checkpoints"},
        "TrainingTimeInSeconds": 6840,
        "BillableTimeInSeconds": 2052,
        "SecondaryStatusTransitions": [
            {"Status": "Starting", "StatusMessage": "Preparing the instances for training"},
            {"Status": "Training", "StatusMessage": "Training image download completed. Training in progress."},
            {"Status": "Interrupted", "StatusMessage": "Training job interrupted because of spot instance termination"},
            {"Status": "Starting", "StatusMessage": "Insufficient capacity error from EC2 while launching instances"},
            {"Status": secondary, "StatusMessage": "The job stopped"},
        ],
    }
    job.update(extra)
    return job


def test_sagemaker_max_wait_is_reported_as_the_binding_limit_with_how_to_raise_it():
    error = submit_sagemaker.outcome_error(training_job("Stopped", "MaxWaitTimeExceeded"))
    assert isinstance(error, WorldError)
    message = str(error)
    assert "ft-spot was stopped at MaxWait: MaxWaitTimeInSeconds (14400 s)" in message
    assert "was the binding limit, not MaxRuntimeInSeconds (7200 s)" in message
    assert "raise --max-wait-seconds (e.g. 28800; at most 2419200) or run on demand with --no-spot" in message
    assert "--checkpoint-s3-uri s3://my-bucket/jobs/ft-spot/checkpoints and it resumes" in message


def test_sagemaker_max_wait_at_the_ceiling_says_there_is_no_more_to_give():
    ceiling = submit_sagemaker.MAX_RUNTIME_LIMIT_SECONDS
    job = training_job(
        "Stopped",
        "MaxWaitTimeExceeded",
        StoppingCondition={"MaxRuntimeInSeconds": 7200, "MaxWaitTimeInSeconds": ceiling},
    )
    message = str(submit_sagemaker.outcome_error(job))
    assert "at SageMaker's ceiling" in message and "--no-spot" in message and "e.g." not in message


def test_sagemaker_max_runtime_is_told_apart_from_max_wait():
    message = str(submit_sagemaker.outcome_error(training_job("Stopped", "MaxRuntimeExceeded")))
    assert "stopped at MaxRuntime: MaxRuntimeInSeconds (7200 s) was the binding limit" in message
    assert "raise --max-runtime-seconds" in message and "MaxWait" not in message.split("(at most")[0]


@pytest.mark.parametrize(
    "reason, family",
    [
        ("AlgorithmError: , exit code: 64", UserError),
        ("AlgorithmError: , exit code: 143", WorldError),
        ("InternalServerError: We encountered an internal error. Please try again.", WorldError),
    ],
)
def test_sagemaker_failures_map_to_the_two_families(reason, family):
    error = submit_sagemaker.outcome_error(training_job("Failed", "Failed", FailureReason=reason))
    assert type(error) is family and reason in str(error) and "MaxWait" not in str(error)


def test_sagemaker_completed_is_no_error():
    assert submit_sagemaker.outcome_error(training_job("Completed", "Completed")) is None


def test_sagemaker_follow_logs_each_change_of_status_and_stops_at_the_end():
    states = iter(
        [
            ("InProgress", "Starting"),
            ("InProgress", "Training"),
            ("InProgress", "Training"),
            ("InProgress", "Interrupted"),
            ("Stopping", "Stopping"),
            ("Stopped", "MaxWaitTimeExceeded"),
            ("never", "reached"),
        ]
    )
    logged, slept = [], []
    job = submit_sagemaker.follow(
        lambda name: training_job(*next(states)), "ft-spot", sleep=slept.append, log=logged.append, poll_seconds=9
    )
    assert job["SecondaryStatus"] == "MaxWaitTimeExceeded"
    assert logged == [
        "ft-spot: InProgress (Starting)",
        "ft-spot: InProgress (Training)",
        "ft-spot: InProgress (Interrupted)",
        "ft-spot: Stopping",
        "ft-spot: Stopped (MaxWaitTimeExceeded)",
    ]
    assert slept == [9] * 5
