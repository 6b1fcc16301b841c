"""`finetune submit` as a subprocess against the moto server: what lands in Batch and SageMaker.

moto runs Batch jobs in containers unless told otherwise; these tests check the submission, not
the job, so the server is switched to `{"batch": {"use_docker": false}}` (jobs succeed at once)
and switched back afterwards. Where a test needs a job to end another way (out of attempts after
spot interruptions, stopped at SageMaker's MaxWait), which moto cannot play, a proxy in front of
the server rewrites only the job's description; everything submitted still lands in moto.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import boto3
import pytest

from tests.support.fakes import FaultProxy

REPO = Path(__file__).resolve().parents[2]


def finetune(args: list[str], env: dict, timeout_s: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "entrypoint", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, **env, "HF_HUB_OFFLINE": "1"},
        timeout=timeout_s,
    )


def _moto_config(url: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url + "/moto-api/config", data=data, method="POST" if data else "GET")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"{}")


@pytest.fixture
def batch_queue(aws_env, moto_server):
    """A job queue and job definition on the moto server; yields (queue, definition) names."""
    before = _moto_config(moto_server).get("batch", {})
    _moto_config(moto_server, {"batch": {"use_docker": False}})
    suffix = uuid.uuid4().hex[:8]
    iam, batch = boto3.client("iam"), boto3.client("batch")
    role = iam.create_role(RoleName=f"batch-service-{suffix}", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    environment = batch.create_compute_environment(
        computeEnvironmentName=f"finetune-{suffix}", type="UNMANAGED", state="ENABLED", serviceRole=role
    )
    queue = f"finetune-{suffix}"
    batch.create_job_queue(
        jobQueueName=queue,
        state="ENABLED",
        priority=1,
        computeEnvironmentOrder=[{"order": 1, "computeEnvironment": environment["computeEnvironmentArn"]}],
    )
    definition = f"finetune-{suffix}"
    job_role = iam.create_role(RoleName=f"batch-job-{suffix}", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    batch.register_job_definition(
        jobDefinitionName=definition,
        type="container",
        retryStrategy={"attempts": 3},
        timeout={"attemptDurationSeconds": 7200},
        tags={"Project": "finetune"},
        containerProperties={
            "image": "finetune:test",
            "command": ["finetune"],
            "jobRoleArn": job_role,
            "environment": [{"name": "FT_MODEL", "value": "s3://b/models/tiny/"}],
            "resourceRequirements": [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "1024"}],
        },
    )
    yield queue, definition
    _moto_config(moto_server, {"batch": before})


@pytest.fixture
def sagemaker_role(aws_env):
    name = f"finetune-sagemaker-{uuid.uuid4().hex[:8]}"
    return boto3.client("iam").create_role(RoleName=name, AssumeRolePolicyDocument="{}")["Role"]["Arn"]


def test_submit_batch_lands_settings_as_environment_overrides(aws_env, batch_queue, tmp_path):
    queue, definition = batch_queue
    env_file = tmp_path / "job.env"
    env_file.write_text("FT_MODEL=distilbert-base-uncased\nFT_LEARNING_RATE=1e-4\n")
    result = finetune(
        [
            "submit",
            "batch",
            "--job-queue",
            queue,
            "--job-definition",
            definition,
            "--job-name",
            "sweep-1",
            "--env-file",
            str(env_file),
            "--set",
            "FT_LEARNING_RATE=3e-5",
            "--env",
            "HF_HUB_OFFLINE=1",
            "--array-size",
            "3",
            "--timeout-seconds",
            "3600",
            "--attempts",
            "2",
            "--wait",
            "--poll-seconds",
            "0.2",
        ],
        aws_env,
    )
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip()
    assert len(result.stdout.splitlines()) == 1
    assert f"{job_id}: SUCCEEDED" in result.stderr

    job = boto3.client("batch").describe_jobs(jobs=[job_id])["jobs"][0]
    assert job["jobName"] == "sweep-1"
    assert job["jobQueue"].endswith(f"job-queue/{queue}")
    environment = {e["name"]: e["value"] for e in job["container"]["environment"]}
    assert environment["FT_LEARNING_RATE"] == "3e-5"  # --set wins over --env-file
    assert environment["FT_MODEL"] == "distilbert-base-uncased"
    assert environment["HF_HUB_OFFLINE"] == "1"
    assert job["arrayProperties"]["size"] == 3
    assert job["timeout"] == {"attemptDurationSeconds": 3600}


def test_submit_batch_with_image_runs_a_new_revision_that_differs_only_in_its_image(aws_env, batch_queue):
    queue, definition = batch_queue
    batch = boto3.client("batch")
    old = batch.describe_job_definitions(jobDefinitionName=definition)["jobDefinitions"][0]
    image = "123456789012.dkr.ecr.us-east-1.amazonaws.com/finetune:0123456789abcdef"
    argv = [
        "submit",
        "batch",
        "--job-queue",
        queue,
        "--job-definition",
        definition,
        "--image",
        image,
        "--set",
        "FT_MAX_STEPS=20",
    ]

    dry = finetune([*argv, "--dry-run"], aws_env)
    assert dry.returncode == 0, dry.stderr
    printed = json.loads(dry.stdout)
    assert printed["RegisterJobDefinition"]["containerProperties"]["image"] == image
    assert printed["SubmitJob"]["containerOverrides"]["environment"] == [{"name": "FT_MAX_STEPS", "value": "20"}]
    assert len(batch.describe_job_definitions(jobDefinitionName=definition)["jobDefinitions"]) == 1, "dry run"

    result = finetune([*argv, "--wait", "--poll-seconds", "0.2"], aws_env)
    assert result.returncode == 0, result.stderr
    job = batch.describe_jobs(jobs=[result.stdout.strip()])["jobs"][0]
    new = batch.describe_job_definitions(jobDefinitions=[job["jobDefinition"]])["jobDefinitions"][0]
    assert (new["jobDefinitionName"], new["revision"]) == (definition, old["revision"] + 1)
    assert f"registered job definition {new['jobDefinitionArn']}" in result.stderr
    assert new["containerProperties"]["image"] == image
    assert {k: v for k, v in new["containerProperties"].items() if k != "image"} == {
        k: v for k, v in old["containerProperties"].items() if k != "image"
    }
    for key in ("type", "retryStrategy", "timeout", "tags", "parameters"):
        assert new[key] == old[key], key
    # (moto's job description carries no image of its own; the definition's is the one that runs.)
    assert {e["name"]: e["value"] for e in job["container"]["environment"]}["FT_MAX_STEPS"] == "20"
    # The old revision is untouched and still runs its own image.
    before = batch.describe_job_definitions(jobDefinitions=[old["jobDefinitionArn"]])["jobDefinitions"][0]
    assert (before["status"], before["containerProperties"]["image"]) == ("ACTIVE", "finetune:test")

    # Submitting the same image again reuses the revision instead of registering another.
    again = finetune(argv, aws_env)
    assert again.returncode == 0, again.stderr
    assert "already runs" in again.stderr
    assert len(batch.describe_job_definitions(jobDefinitionName=definition)["jobDefinitions"]) == 2


def test_submit_batch_with_an_unknown_setting_exits_64_and_submits_nothing(aws_env, batch_queue):
    queue, definition = batch_queue
    result = finetune(
        ["submit", "batch", "--job-queue", queue, "--job-definition", definition, "--set", "FT_LERNING_RATE=3e-5"],
        aws_env,
    )
    assert result.returncode == 64
    assert "Did you mean FT_LEARNING_RATE?" in result.stderr
    assert result.stdout == ""
    listed = boto3.client("batch").list_jobs(jobQueue=queue, filters=[{"name": "JOB_NAME", "values": ["*"]}])
    assert listed["jobSummaryList"] == []


def test_submit_batch_to_a_missing_queue_is_a_user_error(aws_env, batch_queue):
    _, definition = batch_queue
    result = finetune(["submit", "batch", "--job-queue", "no-such-queue", "--job-definition", definition], aws_env)
    assert result.returncode == 64, result.stderr
    assert "batch SubmitJob was refused" in result.stderr


def test_submit_sagemaker_creates_a_managed_spot_job_with_checkpoints_and_metrics(aws_env, sagemaker_role, bucket):
    argv = [
        "submit",
        "sagemaker",
        "--image",
        "123456789012.dkr.ecr.us-east-1.amazonaws.com/finetune:1",
        "--role",
        sagemaker_role,
        "--instance-type",
        "ml.g5.xlarge",
        "--output-s3-uri",
        f"s3://{bucket}/jobs",
        "--channel",
        f"train=s3://{bucket}/data/train",
        "--set",
        "FT_LEARNING_RATE=3e-5",
        "--set",
        "FT_NUM_TRAIN_EPOCHS=2",
        "--env",
        "HF_HUB_OFFLINE=1",
        "--max-runtime-seconds",
        "3600",
    ]
    result = finetune(argv, aws_env)
    assert result.returncode == 0, result.stderr
    name = result.stdout.strip()
    assert name.startswith("finetune-") and len(result.stdout.splitlines()) == 1

    job = boto3.client("sagemaker").describe_training_job(TrainingJobName=name)
    assert job["EnableManagedSpotTraining"] is True
    assert job["StoppingCondition"]["MaxRuntimeInSeconds"] == 3600
    assert job["StoppingCondition"]["MaxWaitTimeInSeconds"] == 7200
    assert job["CheckpointConfig"] == {
        "S3Uri": f"s3://{bucket}/jobs/{name}/checkpoints",
        "LocalPath": "/opt/ml/checkpoints",
    }
    assert job["HyperParameters"] == {"learning_rate": "3e-5", "num_train_epochs": "2"}
    assert job["OutputDataConfig"]["S3OutputPath"] == f"s3://{bucket}/jobs"
    assert job["ResourceConfig"] == {"InstanceType": "ml.g5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 100}
    channel = job["InputDataConfig"][0]
    assert channel["ChannelName"] == "train"
    assert channel["DataSource"]["S3DataSource"]["S3Uri"] == f"s3://{bucket}/data/train"
    assert channel["DataSource"]["S3DataSource"]["S3DataDistributionType"] == "FullyReplicated"

    # moto replaces MetricDefinitions with its own and drops Environment, so those two are checked
    # in the request --dry-run prints, after checking that request against every field moto keeps.
    dry = finetune([*argv, "--job-name", name, "--dry-run"], aws_env)
    assert dry.returncode == 0, dry.stderr
    sent = json.loads(dry.stdout)
    for key in (
        "EnableManagedSpotTraining",
        "StoppingCondition",
        "CheckpointConfig",
        "HyperParameters",
        "OutputDataConfig",
        "ResourceConfig",
        "InputDataConfig",
        "RoleArn",
    ):
        assert sent[key] == job[key], key
    assert sent["Environment"] == {"HF_HUB_OFFLINE": "1"}
    metrics = {m["Name"] for m in sent["AlgorithmSpecification"]["MetricDefinitions"]}
    assert {"loss", "eval_loss", "eval_accuracy"} <= metrics


HOST_TERMINATED = "Host EC2 (instance i-0a1b2c3d4e5f67890) terminated."


def out_of_attempts(last_exit_code: int | None, last_reason: str, allowed: int = 3):
    """A rewrite of moto's description of a job (SUCCEEDED at once) into Batch's of one that used
    all `allowed` attempts, each interrupted by spot (exit 143), the last as given."""

    def rewrite(job: dict) -> dict:
        def attempt(code, reason):
            container = {"logStreamName": f"finetune/default/{job['jobId']}", "networkInterfaces": []}
            return {"container": container if code is None else {**container, "exitCode": code}, "statusReason": reason}

        attempts = [attempt(143, "Essential container in task exited") for _ in range(allowed - 1)]
        return {
            **job,
            "status": "FAILED",
            "statusReason": last_reason,
            "attempts": [*attempts, attempt(last_exit_code, last_reason)],
            "retryStrategy": {"attempts": allowed},
        }

    return rewrite


def describe_jobs_rewriter(endings: dict):
    """A FaultProxy rewrite: DescribeJobs answers describe the jobs named in `endings` as it says."""

    def rewrite(path: str, headers: dict, request_body: bytes, body: bytes) -> bytes:
        if not path.startswith("/v1/describejobs"):
            return body
        answer = json.loads(body)
        answer["jobs"] = [endings[j["jobName"]](j) if j["jobName"] in endings else j for j in answer["jobs"]]
        return json.dumps(answer).encode()

    return rewrite


def submitted_requests(proxy: FaultProxy) -> list[dict]:
    return [json.loads(body) for method, path, _, body in proxy.requests if path.startswith("/v1/submitjob")]


def test_submit_batch_resubmits_a_job_that_ran_out_of_attempts_with_the_same_settings(
    aws_env, batch_queue, moto_server
):
    queue, definition = batch_queue
    name = f"long-{uuid.uuid4().hex[:8]}"
    proxy = FaultProxy(
        moto_server,
        rewrite=describe_jobs_rewriter(
            {
                name: out_of_attempts(143, "Essential container in task exited"),
                f"{name}-r1": out_of_attempts(None, HOST_TERMINATED),
            }
        ),
    )
    try:
        result = finetune(
            [
                "submit",
                "batch",
                "--job-queue",
                queue,
                "--job-definition",
                definition,
                "--job-name",
                name,
                "--set",
                "FT_OUTPUT_URI=s3://b/runs/long/",
                "--set",
                "FT_MAX_STEPS=100000",
                "--env",
                "HF_HUB_OFFLINE=1",
                "--timeout-seconds",
                "3600",
                "--attempts",
                "3",
                "--wait",
                "--poll-seconds",
                "0.2",
                "--resubmit",
                "2",
            ],
            {**aws_env, "AWS_ENDPOINT_URL_BATCH": proxy.url},
        )
    finally:
        proxy.close()
    assert result.returncode == 0, result.stderr
    ids = result.stdout.split()
    assert len(ids) == 3, "one line per job submitted"

    # The resubmissions are the first request under new names: same queue, definition, settings
    # (so the same checkpoint location), attempts and retry rules, timeout.
    first, *again = submitted_requests(proxy)
    assert [r["jobName"] for r in again] == [f"{name}-r1", f"{name}-r2"]
    assert all({**r, "jobName": name} == first for r in again)
    jobs = {j["jobId"]: j for j in boto3.client("batch").describe_jobs(jobs=ids)["jobs"]}
    assert [jobs[i]["jobName"] for i in ids] == [name, f"{name}-r1", f"{name}-r2"]

    def landed(job: dict) -> tuple:
        environment = {
            e["name"]: e["value"] for e in job["container"]["environment"] if e["name"] != "AWS_BATCH_JOB_ID"
        }
        return job["jobQueue"], job["jobDefinition"], environment, job["timeout"]

    assert landed(jobs[ids[1]]) == landed(jobs[ids[2]]) == landed(jobs[ids[0]])
    assert landed(jobs[ids[0]])[2]["FT_OUTPUT_URI"] == "s3://b/runs/long/"

    assert (
        f"Batch job {name} ({ids[0]}) used all 3 of its 3 attempt(s); the last was interrupted (exit code 143, "
        f"INTERRUPTED): Essential container in task exited. Resubmitting it (1 of 2) with the same settings"
    ) in result.stderr
    assert f"submitted {name}-r1 ({ids[1]})" in result.stderr
    assert (
        f"Batch job {name}-r1 ({ids[1]}) used all 3 of its 3 attempt(s); the last lost its host, a spot reclaim "
        f"(no exit code): {HOST_TERMINATED}"
    ) in result.stderr
    assert f"submitted {name}-r2 ({ids[2]})" in result.stderr and f"{ids[2]}: SUCCEEDED" in result.stderr


def test_submit_batch_never_resubmits_a_user_error(aws_env, batch_queue, moto_server):
    queue, definition = batch_queue
    name = f"bad-{uuid.uuid4().hex[:8]}"
    proxy = FaultProxy(
        moto_server,
        rewrite=describe_jobs_rewriter({name: out_of_attempts(64, "Essential container in task exited", 1)}),
    )
    argv = ["submit", "batch", "--job-queue", queue, "--job-definition", definition, "--job-name", name]
    try:
        result = finetune(
            [*argv, "--wait", "--poll-seconds", "0.2", "--resubmit", "3"],
            {**aws_env, "AWS_ENDPOINT_URL_BATCH": proxy.url},
        )
    finally:
        proxy.close()
    assert result.returncode == 64, result.stderr
    assert len(result.stdout.split()) == 1 and len(submitted_requests(proxy)) == 1
    assert f"not resubmitted: Batch job {name} ({result.stdout.strip()}) FAILED with exit code 64" in result.stderr


def sagemaker_argv(role: str, bucket: str, name: str) -> list[str]:
    return [
        "submit",
        "sagemaker",
        "--image",
        "123456789012.dkr.ecr.us-east-1.amazonaws.com/finetune:1",
        "--role",
        role,
        "--instance-type",
        "ml.g5.xlarge",
        "--output-s3-uri",
        f"s3://{bucket}/jobs",
        "--job-name",
        name,
        "--max-runtime-seconds",
        "3600",
        "--wait",
        "--poll-seconds",
        "0.2",
    ]


def test_submit_sagemaker_wait_follows_the_job_to_completed(aws_env, sagemaker_role, bucket):
    name = f"ft-{uuid.uuid4().hex[:8]}"
    result = finetune(sagemaker_argv(sagemaker_role, bucket, name), aws_env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == name and f"{name}: Completed" in result.stderr


def test_submit_sagemaker_wait_says_when_max_wait_was_the_binding_limit(aws_env, sagemaker_role, bucket, moto_server):
    name = f"ft-{uuid.uuid4().hex[:8]}"

    def stopped_at_max_wait(path: str, headers: dict, request_body: bytes, body: bytes) -> bytes:
        target = {k.lower(): v for k, v in headers.items()}.get("x-amz-target")
        if target != "SageMaker.DescribeTrainingJob":
            return body
        job = json.loads(body)
        job.update(TrainingJobStatus="Stopped", SecondaryStatus="MaxWaitTimeExceeded")
        return json.dumps(job).encode()

    proxy = FaultProxy(moto_server, rewrite=stopped_at_max_wait)
    try:
        result = finetune(
            sagemaker_argv(sagemaker_role, bucket, name), {**aws_env, "AWS_ENDPOINT_URL_SAGEMAKER": proxy.url}
        )
    finally:
        proxy.close()
    assert result.returncode == 75, result.stderr
    assert f"{name}: Stopped (MaxWaitTimeExceeded)" in result.stderr
    assert "MaxWaitTimeInSeconds (7200 s)" in result.stderr and "was the binding limit" in result.stderr
    assert "raise --max-wait-seconds (e.g. 14400" in result.stderr
    assert f"--checkpoint-s3-uri s3://{bucket}/jobs/{name}/checkpoints" in result.stderr
