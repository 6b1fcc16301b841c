"""`terraform apply` of the example root against the moto server, checked with boto3, then destroy."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import boto3
import pytest

from entrypoint.errors import retry_rules_json
from tests.infra.terraform_support import REPO, run_terraform, terraform_env

pytestmark = pytest.mark.slow


def _evaluate_on_exit(rules: list[dict]) -> list[dict]:
    """retry_rules_json() in the Batch API's shape; Batch reports actions in lower case."""
    names = {"on_exit_code": "onExitCode", "on_status_reason": "onStatusReason", "on_reason": "onReason"}
    return [{names.get(k, k): v.lower() if k == "action" else v for k, v in rule.items()} for rule in rules]


def _check_resources(out: dict, name: str) -> None:
    s3 = boto3.client("s3")
    bucket = out["bucket_name"]
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    rules = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert any(r["Filter"].get("Prefix") == "checkpoints/" and "NoncurrentVersionExpiration" in r for r in rules)
    assert any("AbortIncompleteMultipartUpload" in r for r in rules)
    block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    assert all(block.values()), block

    repo = boto3.client("ecr").describe_repositories(repositoryNames=[name])["repositories"][0]
    assert repo["repositoryUri"] == out["repository_url"]
    assert repo["imageTagMutability"] == "IMMUTABLE" and repo["imageScanningConfiguration"]["scanOnPush"]

    batch = boto3.client("batch")
    queue = batch.describe_job_queues(jobQueues=[out["job_queue_name"]])["jobQueues"][0]
    order = sorted(queue["computeEnvironmentOrder"], key=lambda o: o["order"])
    envs = {
        e["computeEnvironmentArn"]: e
        for e in batch.describe_compute_environments(computeEnvironments=[o["computeEnvironment"] for o in order])[
            "computeEnvironments"
        ]
    }
    kinds = [envs[o["computeEnvironment"]]["computeResources"]["type"] for o in order]
    assert kinds == ["SPOT", "EC2"], "spot first, on-demand fallback"
    spot = envs[order[0]["computeEnvironment"]]["computeResources"]
    assert spot["allocationStrategy"] == "SPOT_CAPACITY_OPTIMIZED"
    assert spot["ec2Configuration"] == [{"imageType": "ECS_AL2_NVIDIA"}]

    multinode_queue = batch.describe_job_queues(jobQueues=[out["multinode_job_queue_name"]])["jobQueues"][0]
    assert [
        envs[o["computeEnvironment"]]["computeResources"]["type"] for o in multinode_queue["computeEnvironmentOrder"]
    ] == ["EC2"]

    definitions = batch.describe_job_definitions(
        jobDefinitions=[out["job_definition_arn"], out["multinode_job_definition_arn"]]
    )["jobDefinitions"]
    by_arn = {d["jobDefinitionArn"]: d for d in definitions}
    single, multi = by_arn[out["job_definition_arn"]], by_arn[out["multinode_job_definition_arn"]]
    assert (single["type"], multi["type"]) == ("container", "multinode")
    for definition in (single, multi):
        assert definition["retryStrategy"]["attempts"] == 5
        rules = [
            {k: v.lower() if k == "action" else v for k, v in r.items()}
            for r in definition["retryStrategy"]["evaluateOnExit"]
        ]
        assert rules == _evaluate_on_exit(retry_rules_json())
        assert definition["timeout"]["attemptDurationSeconds"] == 86400
    container = single["containerProperties"]
    assert {r["type"]: r["value"] for r in container["resourceRequirements"]} == {
        "GPU": "1",
        "VCPU": "4",
        "MEMORY": "14336",
    }
    env = {e["name"]: e["value"] for e in container["environment"]}
    assert {"FT_MODEL", "FT_TRAIN_DATA", "FT_EVAL_DATA", "FT_OUTPUT_URI", "FT_CHECKPOINT_URI"} <= env.keys()
    assert container["jobRoleArn"] == out["job_role_arn"]

    iam = boto3.client("iam")
    for role_arn in (out["job_role_arn"], out["sagemaker_role_arn"]):
        role = role_arn.rsplit("/", 1)[1]
        policies = [
            json.loads(p) if isinstance(p, str) else p
            for p in (
                iam.get_role_policy(RoleName=role, PolicyName=n)["PolicyDocument"]
                for n in iam.list_role_policies(RoleName=role)["PolicyNames"]
            )
        ]
        writes = [s["Resource"] for p in policies for s in p["Statement"] if "s3:PutObject" in s["Action"]]
        assert writes == [[f"arn:aws:s3:::{bucket}/checkpoints/*", f"arn:aws:s3:::{bucket}/outputs/*"]], role
    for role in (f"{name}-batch-instance", f"{name}-batch-service", f"{name}-codebuild"):
        iam.get_role(RoleName=role)
    iam.get_instance_profile(InstanceProfileName=f"{name}-batch-instance")

    groups = boto3.client("logs").describe_log_groups(logGroupNamePrefix=out["log_group_name"])["logGroups"]
    assert [(g["logGroupName"], g["retentionInDays"]) for g in groups] == [(out["log_group_name"], 365)]

    project = boto3.client("codebuild").batch_get_projects(names=[out["codebuild_project_name"]])["projects"][0]
    assert project["environment"]["privilegedMode"] is True
    assert project["cache"]["type"] == "LOCAL" and "LOCAL_DOCKER_LAYER_CACHE" in project["cache"]["modes"]
    variables = {v["name"]: v["value"] for v in project["environment"]["environmentVariables"]}
    assert variables["ECR_REPOSITORY_URL"] == out["repository_url"]
    assert variables["SMOKE_JOB_QUEUE"] == out["job_queue_arn"]
    assert variables["SMOKE_JOB_DEFINITION"] == out["job_definition_arn"].rsplit("/", 1)[1].split(":")[0]
    smoke = iam.get_role_policy(RoleName=f"{name}-codebuild", PolicyName="submit-smoke-job")["PolicyDocument"]
    smoke = json.loads(smoke) if isinstance(smoke, str) else smoke
    submit = next(s for s in smoke["Statement"] if s["Action"] == ["batch:SubmitJob"])
    assert out["job_queue_arn"] in submit["Resource"]
    passed = next(s for s in smoke["Statement"] if s["Action"] == ["iam:PassRole"])
    assert passed["Resource"] == [out["job_role_arn"]]


def _finetune(env: dict, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "entrypoint", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.strip()


def _submit_to_what_terraform_made(env: dict, out: dict, moto_server: str) -> None:
    """`finetune submit batch` to the queue and definition, `submit sagemaker` with the role."""
    import urllib.request

    # No container engine here: moto is told not to run the Batch job's container.
    request = urllib.request.Request(
        f"{moto_server}/moto-api/config",
        data=json.dumps({"batch": {"use_docker": False}}).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    urllib.request.urlopen(request, timeout=10).read()
    bucket = out["bucket_name"]
    job_id = _finetune(
        env,
        "submit",
        "batch",
        "--job-queue",
        out["job_queue_name"],
        "--job-definition",
        out["job_definition_arn"],
        "--set",
        f"FT_TRAIN_DATA=s3://{bucket}/data/train.csv",
        "--set",
        "FT_LEARNING_RATE=3e-5",
    )
    job = boto3.client("batch").describe_jobs(jobs=[job_id])["jobs"][0]
    assert job["jobQueue"].endswith(out["job_queue_name"]) and job["jobDefinition"] == out["job_definition_arn"]
    overrides = {e["name"]: e["value"] for e in job["container"]["environment"]}
    assert overrides["FT_LEARNING_RATE"] == "3e-5"

    # As the CI smoke job does: the definition by name, with this commit's image.
    image = f"{out['repository_url']}:0123456789abcdef0123456789abcdef01234567"
    definition = out["job_definition_arn"].rsplit("/", 1)[1].split(":")[0]
    job_id = _finetune(
        env,
        "submit",
        "batch",
        "--job-queue",
        out["job_queue_arn"],
        "--job-definition",
        definition,
        "--image",
        image,
        "--set",
        "FT_MAX_STEPS=20",
    )
    job = boto3.client("batch").describe_jobs(jobs=[job_id])["jobs"][0]
    batch = boto3.client("batch")
    new, old = (
        batch.describe_job_definitions(jobDefinitions=[arn])["jobDefinitions"][0]
        for arn in (job["jobDefinition"], out["job_definition_arn"])
    )
    assert new["revision"] > old["revision"] and new["containerProperties"]["image"] == image
    assert {**new["containerProperties"], "image": None} == {**old["containerProperties"], "image": None}
    for key in ("retryStrategy", "timeout", "tags", "propagateTags", "platformCapabilities"):
        assert new[key] == old[key], key

    name = _finetune(
        env,
        "submit",
        "sagemaker",
        "--image",
        f"{out['repository_url']}:test",
        "--role",
        out["sagemaker_role_arn"],
        "--instance-type",
        "ml.g5.xlarge",
        "--output-s3-uri",
        f"s3://{bucket}/outputs/",
        "--checkpoint-s3-uri",
        f"s3://{bucket}/checkpoints/sm/",
        "--channel",
        f"train=s3://{bucket}/data/",
        "--set",
        f"FT_MODEL=s3://{bucket}/models/minilm/",
    )
    described = boto3.client("sagemaker").describe_training_job(TrainingJobName=name)
    assert described["RoleArn"] == out["sagemaker_role_arn"]
    assert described["EnableManagedSpotTraining"] is True
    assert described["CheckpointConfig"]["S3Uri"] == f"s3://{bucket}/checkpoints/sm/"


def test_apply_and_destroy_example_on_moto(example_root, moto_server, aws_env):
    name = f"ft-{uuid.uuid4().hex[:8]}"
    env = terraform_env(aws_env)
    tf_vars = [
        f"-var=name={name}",
        f"-var=aws_endpoint_url={moto_server}",
        "-var=skip_credentials_validation=true",
        "-var=skip_requesting_account_id=true",
        "-var=skip_metadata_api_check=true",
    ]

    started = time.monotonic()
    applied = run_terraform(["apply", "-auto-approve", *tf_vars], example_root, env=env, timeout_s=900)
    apply_s = time.monotonic() - started
    try:
        assert applied.returncode == 0, applied.stdout[-5000:] + applied.stderr
        shown = run_terraform(["output", "-json"], example_root, env=env)
        assert shown.returncode == 0, shown.stderr
        out = {k: v["value"] for k, v in json.loads(shown.stdout).items()}
        _check_resources(out, name)
        _submit_to_what_terraform_made(dict(env, HF_HUB_OFFLINE="1"), out, moto_server)
    finally:
        started = time.monotonic()
        destroyed = run_terraform(["destroy", "-auto-approve", *tf_vars], example_root, env=env, timeout_s=900)
        destroy_s = time.monotonic() - started
        print(f"terraform apply {apply_s:.0f} s, destroy {destroy_s:.0f} s")
    assert destroyed.returncode == 0, destroyed.stdout[-5000:] + destroyed.stderr
    assert not boto3.client("batch").describe_job_queues(jobQueues=[f"{name}"])["jobQueues"]
    assert name not in [r["RoleName"] for r in boto3.client("iam").list_roles()["Roles"]]
