"""The `finetune submit` request builders, flag checks and job following, without AWS.

Snapshots: the full requests are compared with JSON files under snapshots/. After a deliberate
change, regenerate them with `UPDATE_SNAPSHOTS=1 pytest tests/unit/test_submit.py` and review
the diff.
"""

from __future__ import annotations

import datetime
import json
import os
import re
from pathlib import Path

import pytest

from entrypoint.errors import RETRY_RULES, UserError, WorldError
from entrypoint.reporting import STANDARD_METRICS, format_metrics
from entrypoint.submit import batch as submit_batch
from entrypoint.submit import command as submit
from entrypoint.submit import sagemaker as submit_sagemaker

SNAPSHOTS = Path(__file__).parent / "snapshots"
ROLE = "arn:aws:iam::123456789012:role/finetune-sagemaker"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/finetune:1.0"


def assert_snapshot(name: str, value: dict) -> None:
    path = SNAPSHOTS / name
    text = json.dumps(value, indent=2, sort_keys=True) + "\n"
    if os.environ.get("UPDATE_SNAPSHOTS") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} is missing; create it with UPDATE_SNAPSHOTS=1 and review it"
    assert text == path.read_text(), f"{name} differs from the snapshot; if intended, rerun with UPDATE_SNAPSHOTS=1"


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
    return submit_sagemaker.build_create_training_job_request(**kwargs)


def batch_request(**overrides) -> dict:
    kwargs = dict(
        job_name="finetune-20250102-030405-678",
        job_queue="finetune-spot",
        job_definition="finetune:3",
        settings={"FT_MODEL": "distilbert-base-uncased", "FT_LEARNING_RATE": "3e-5"},
    )
    kwargs.update(overrides)
    return submit_batch.build_submit_job_request(**kwargs)


def run_dry(argv: list[str], capsys, environ=None) -> dict:
    assert submit.main([*argv, "--dry-run"], environ or {}) == 0
    return json.loads(capsys.readouterr().out)


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
    request = submit_batch.derive_job_definition(described, IMAGE)
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
        self.registered.append(request)
        self.definitions.append({**request, "revision": revision, "status": "ACTIVE", "jobDefinitionArn": arn})
        return {"jobDefinitionArn": arn, "jobDefinitionName": request["jobDefinitionName"], "revision": revision}


def test_with_image_registers_a_revision_and_points_the_request_at_it(capsys):
    client = FakeDefinitions(
        [described_definition(revision=2, jobDefinitionArn="arn:...:finetune:2"), described_definition()]
    )
    request = submit.with_image(client, "finetune", IMAGE, batch_request(job_definition="finetune"), dry_run=False)
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
    with pytest.raises(family, match=f"sagemaker CreateTrainingJob {verb}: {code}"):
        with submit.aws_errors("sagemaker CreateTrainingJob"):
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
