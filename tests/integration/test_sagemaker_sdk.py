"""examples/sagemaker_sdk.py run for real: the SageMaker Python SDK's ModelTrainer creates the
training job against the moto server (through a recording proxy, since moto replaces the metric
definitions it is sent), and the request is the one `finetune submit sagemaker` would make (same
hyperparameters, spot, checkpoint location, metric regexes), valid for botocore's own model.

The SDK lives in a venv of its own (it pins boto3); `make test-slow` builds it and points
SAGEMAKER_PYTHON at its interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import boto3
import botocore.session
import botocore.validate
import pytest

from entrypoint.reporting import STANDARD_METRICS, metric_definitions
from entrypoint.submit.sagemaker import CHECKPOINT_LOCAL_PATH, default_max_wait_seconds
from tests.support.fakes import FaultProxy

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/finetune:test"
ROLE = "arn:aws:iam::123456789012:role/finetune-sagemaker"


def test_the_sdk_example_creates_the_same_training_job(aws_env, bucket, tmp_path):
    python = os.environ.get("SAGEMAKER_PYTHON")
    if not python:
        pytest.skip("SAGEMAKER_PYTHON is not set: `make test-slow` builds the SDK's venv and sets it")
    proxy = FaultProxy(aws_env["AWS_ENDPOINT_URL"])
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FT_"))},
        **aws_env,
        "AWS_ENDPOINT_URL": proxy.url,
        # The SDK checks the role's permissions with iam:SimulatePrincipalPolicy, which moto lacks.
        "SAGEMAKER_VALIDATE_ROLE": "false",
        "PYTHONPATH": str(REPO),
        "SAGEMAKER_DISABLE_TELEMETRY": "true",
        "HOME": str(tmp_path),  # the SDK writes its config and caches under ~
    }
    done = subprocess.run(
        [python, str(REPO / "examples" / "sagemaker_sdk.py"), "--image", IMAGE, "--role", ROLE, "--bucket", bucket,
         "--max-runtime-seconds", "7200", "--set", "FT_MODEL=s3://models/minilm/", "--set", "FT_LEARNING_RATE=3e-5",
         "--set", "FT_NUM_TRAIN_EPOCHS=2"],
        capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path,
    )  # fmt: skip
    proxy.close()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    sent = [json.loads(body) for _, _, headers, body in proxy.requests
            if headers.get("X-Amz-Target") == "SageMaker.CreateTrainingJob"]  # fmt: skip
    assert len(sent) == 1, [h.get("X-Amz-Target") for _, _, h, _ in proxy.requests]
    request = sent[0]
    model = botocore.session.get_session().get_service_model("sagemaker")
    botocore.validate.validate_parameters(request, model.operation_model("CreateTrainingJob").input_shape)
    regexes = {d["Name"]: d["Regex"] for d in request["AlgorithmSpecification"]["MetricDefinitions"]}
    assert regexes == {d["Name"]: d["Regex"] for d in metric_definitions(STANDARD_METRICS)}

    client = boto3.client("sagemaker", region_name="us-east-1")
    names = [j["TrainingJobName"] for j in client.list_training_jobs()["TrainingJobSummaries"]]
    run = done.stderr.split("run ", 1)[1].split(":", 1)[0]
    mine = [n for n in names if n.startswith(run)]
    assert len(mine) == 1, (run, names)
    job = client.describe_training_job(TrainingJobName=mine[0])

    assert job["AlgorithmSpecification"]["TrainingImage"] == IMAGE
    assert job["RoleArn"] == ROLE
    hyper = job["HyperParameters"]
    assert {k: hyper[k].strip('"') for k in ("model", "learning_rate", "num_train_epochs")} == {
        "model": "s3://models/minilm/",
        "learning_rate": "3e-5",
        "num_train_epochs": "2",
    }
    assert job["EnableManagedSpotTraining"] is True
    assert job["StoppingCondition"]["MaxRuntimeInSeconds"] == 7200
    assert job["StoppingCondition"]["MaxWaitTimeInSeconds"] == default_max_wait_seconds(7200)
    assert job["CheckpointConfig"] == {"S3Uri": f"s3://{bucket}/checkpoints/{run}", "LocalPath": CHECKPOINT_LOCAL_PATH}
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in job["InputDataConfig"]}
    assert channels == {"train": f"s3://{bucket}/data/train", "eval": f"s3://{bucket}/data/eval"}
