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

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]  # apply and destroy may each take up to 900 s


def _evaluate_on_exit(rules: list[dict]) -> list[dict]:
    """retry_rules_json() in the Batch API's shape; Batch reports actions in lower case."""
    names = {"on_exit_code": "onExitCode", "on_status_reason": "onStatusReason", "on_reason": "onReason"}
    return [{names.get(k, k): v.lower() if k == "action" else v for k, v in rule.items()} for rule in rules]


# The example's -var=secrets (Batch's own) and -var=secret_arns (FT_SECRETS), see tf_vars below.
SECRET_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:hf-token-AbCdEf"


def _policies(iam, role: str) -> dict[str, dict]:
    documents = {
        n: iam.get_role_policy(RoleName=role, PolicyName=n)["PolicyDocument"]
        for n in iam.list_role_policies(RoleName=role)["PolicyNames"]
    }
    return {n: json.loads(d) if isinstance(d, str) else d for n, d in documents.items()}


def _check_secrets(iam, container: dict, out: dict, name: str) -> None:
    """Batch's secrets by ARN with an execution role that reads exactly them; the job roles read
    exactly the FT_SECRETS ARN; the hosts have the narrowed ECS agent policy and nothing else."""
    assert container["secrets"] == [{"name": "HF_TOKEN", "valueFrom": SECRET_ARN}]
    assert "HF_TOKEN" not in {e["name"] for e in container["environment"]}
    execution = _policies(iam, container["executionRoleArn"].rsplit("/", 1)[1])
    assert [s["Resource"] for s in execution["read-secrets"]["Statement"]] == [[SECRET_ARN]]
    for role_arn in (out["job_role_arn"], out["sagemaker_role_arn"]):
        statements = [s for p in _policies(iam, role_arn.rsplit("/", 1)[1]).values() for s in p["Statement"]]
        assert [s["Resource"] for s in statements if s.get("Sid") == "ReadJobSecrets"] == [[SECRET_ARN]], role_arn
    instance = f"{name}-batch-instance"
    assert iam.list_attached_role_policies(RoleName=instance)["AttachedPolicies"] == []
    agent = {s["Sid"]: s for s in _policies(iam, instance)["ecs-agent"]["Statement"]}
    assert agent["PullImage"]["Resource"] == [f"arn:aws:ecr:us-east-1:123456789012:repository/{name}"]


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
    _check_secrets(iam, container, out, name)
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


def _state_resources(root, env: dict) -> list[dict]:
    """Every managed resource in the Terraform state (root and child modules): address, type, values."""
    shown = run_terraform(["show", "-json"], root, env=env)
    assert shown.returncode == 0, shown.stderr
    found, modules = [], [json.loads(shown.stdout).get("values", {}).get("root_module", {})]
    while modules:
        module = modules.pop()
        found += [r for r in module.get("resources", []) if r.get("mode") == "managed"]
        modules += module.get("child_modules", [])
    return found


def _all(client, operation: str, key: str, **kwargs) -> list:
    """Every item of a paginated listing (moto, like AWS, may return it in pages)."""
    return [item for page in client.get_paginator(operation).paginate(**kwargs) for item in page.get(key, [])]


# Where moto cannot show a resource gone, what Terraform says is taken instead: its destroy output
# must report the resource's destruction complete.
MOTO_GAPS = {
    # Terraform deletes a project by its ARN (DeleteProject accepts a name or an ARN); moto 5's
    # DeleteProject looks the value up as a name only, so the project stays listed on moto.
    "aws_codebuild_project": "moto's DeleteProject ignores the project ARN Terraform sends",
}


def _remaining(created: list[dict], destroy_output: str) -> list[str]:
    """The resources of `created` that still exist, each as 'address (type)'. Every resource type
    needs a check here: a type without one is reported, so a new resource cannot go unchecked.
    Terraform must also have reported each one's destruction complete."""
    s3, iam, batch, ec2 = (boto3.client(n) for n in ("s3", "iam", "batch", "ec2"))
    roles = {r["RoleName"] for r in _all(iam, "list_roles", "Roles")}
    buckets = {b["Name"] for b in _all(s3, "list_buckets", "Buckets")}
    repositories = {r["repositoryName"] for r in _all(boto3.client("ecr"), "describe_repositories", "repositories")}
    groups = {g["GroupId"] for g in _all(ec2, "describe_security_groups", "SecurityGroups")}
    exists = {
        "aws_s3_bucket": lambda v: v["bucket"] in buckets,
        "aws_ecr_repository": lambda v: v["name"] in repositories,
        "aws_ecr_lifecycle_policy": lambda v: v["repository"] in repositories,
        "aws_iam_role": lambda v: v["name"] in roles,
        "aws_iam_role_policy": lambda v: (
            v["role"] in roles and v["name"] in _all(iam, "list_role_policies", "PolicyNames", RoleName=v["role"])
        ),
        "aws_iam_role_policy_attachment": lambda v: (
            v["role"] in roles
            and v["policy_arn"]
            in [
                p["PolicyArn"] for p in _all(iam, "list_attached_role_policies", "AttachedPolicies", RoleName=v["role"])
            ]
        ),
        "aws_iam_instance_profile": lambda v: (
            v["name"] in [p["InstanceProfileName"] for p in _all(iam, "list_instance_profiles", "InstanceProfiles")]
        ),
        "aws_batch_compute_environment": lambda v: (
            v["arn"]
            in [c["computeEnvironmentArn"] for c in _all(batch, "describe_compute_environments", "computeEnvironments")]
        ),
        "aws_batch_job_queue": lambda v: (
            v["arn"] in [q["jobQueueArn"] for q in _all(batch, "describe_job_queues", "jobQueues")]
        ),
        # A deregistered job definition stays listed, INACTIVE.
        "aws_batch_job_definition": lambda v: (
            v["arn"]
            in [
                d["jobDefinitionArn"]
                for d in _all(batch, "describe_job_definitions", "jobDefinitions", status="ACTIVE")
            ]
        ),
        "aws_cloudwatch_log_group": lambda v: (
            v["name"] in [g["logGroupName"] for g in _all(boto3.client("logs"), "describe_log_groups", "logGroups")]
        ),
        "aws_codebuild_project": lambda v: v["name"] in _all(boto3.client("codebuild"), "list_projects", "projects"),
        "aws_vpc": lambda v: v["id"] in [x["VpcId"] for x in _all(ec2, "describe_vpcs", "Vpcs")],
        "aws_subnet": lambda v: v["id"] in [x["SubnetId"] for x in _all(ec2, "describe_subnets", "Subnets")],
        "aws_security_group": lambda v: v["id"] in groups,
        "aws_default_security_group": lambda v: v["id"] in groups,  # goes with its VPC
        "aws_launch_template": lambda v: (
            v["id"] in [t["LaunchTemplateId"] for t in _all(ec2, "describe_launch_templates", "LaunchTemplates")]
        ),
    }
    # Parts of a bucket: they go with it.
    for kind in (
        "lifecycle_configuration",
        "ownership_controls",
        "policy",
        "public_access_block",
        "server_side_encryption_configuration",
        "versioning",
    ):
        exists[f"aws_s3_bucket_{kind}"] = lambda v: v["bucket"] in buckets
    left = []
    for resource in created:
        address, kind = resource["address"], resource["type"]
        check, problems = exists.get(kind), []
        if f"{address}: Destruction complete" not in destroy_output:
            problems.append("terraform destroy did not destroy it")
        if check is None:
            problems.append("no check for this type in _remaining")
        elif kind not in MOTO_GAPS and check(resource["values"]):
            problems.append("still there")
        if problems:
            left.append(f"{address} ({kind}: {'; '.join(problems)})")
    return left


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
        f'-var=secrets={{HF_TOKEN="{SECRET_ARN}"}}',
        f'-var=secret_arns=["{SECRET_ARN}"]',
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
        created = _state_resources(example_root, env)  # what the apply made, to look for after destroy
        started = time.monotonic()
        destroyed = run_terraform(["destroy", "-auto-approve", *tf_vars], example_root, env=env, timeout_s=900)
        destroy_s = time.monotonic() - started
        print(f"terraform apply {apply_s:.0f} s, destroy {destroy_s:.0f} s")
    assert destroyed.returncode == 0, destroyed.stdout[-5000:] + destroyed.stderr
    kinds = {r["type"] for r in created}
    assert {"aws_s3_bucket", "aws_iam_role", "aws_batch_job_queue", "aws_batch_compute_environment"} <= kinds, kinds
    left = _remaining(created, destroyed.stdout)
    assert not left, f"{len(left)} of the {len(created)} resources the apply made remain after destroy:\n" + "\n".join(
        left
    )
