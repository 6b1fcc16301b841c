"""A job configured by an FT_CONFIG file in S3: it trains, and settings.json records what it ran with."""

import json

import boto3
import pytest
import yaml

from entrypoint.config.sensitive import REDACTED
from tests.integration.conftest import settings
from tests.support import jobs

pytestmark = pytest.mark.integration


def test_a_job_configured_by_a_file_in_s3_publishes_its_settings_with_secrets_redacted(
    aws_env, bucket, job_inputs, tmp_path
):
    job = dict(settings(job_inputs, bucket, "configured", tmp_path), max_steps=6, seed=7)
    job["hub_token"] = "hf_planted_secret_value"
    body = yaml.safe_dump({name.upper() if name == "seed" else name: value for name, value in job.items()})
    boto3.client("s3").put_object(Bucket=bucket, Key="jobs/tiny.yaml", Body=body.encode())
    uri = f"s3://{bucket}/jobs/tiny.yaml"

    env = jobs.child_env(aws_env, config=uri, max_steps="5")  # the environment wins over the file
    rc, out = jobs.run(env, tmp_path)
    assert rc == 0, out[-3000:]
    assert "hf_planted_secret_value" not in out

    keys = jobs.s3_keys(bucket, "runs/configured/")
    assert {"runs/configured/settings.json", "runs/configured/metrics.json"} <= keys.keys()
    raw = jobs.s3_bytes(bucket, "runs/configured/settings.json").decode()
    published = json.loads(raw)
    assert "hf_planted_secret_value" not in raw and published["hub_token"] == REDACTED
    assert published["config"] == uri and published["seed"] == 7 and published["max_steps"] == 5
    assert published["model"] == job_inputs["model"]
    assert json.loads(jobs.s3_bytes(bucket, "runs/configured/metrics.json"))["global_step"] == 5


def test_an_unknown_key_in_the_file_fails_before_any_work_naming_the_file(aws_env, bucket, job_inputs, tmp_path):
    job = dict(settings(job_inputs, bucket, "typo", tmp_path), lerning_rate=1e-4)
    boto3.client("s3").put_object(Bucket=bucket, Key="jobs/typo.yml", Body=yaml.safe_dump(job).encode())
    rc, out = jobs.run(jobs.child_env(aws_env, config=f"s3://{bucket}/jobs/typo.yml"), tmp_path)
    assert rc == 64, out[-3000:]
    assert f"FT_CONFIG s3://{bucket}/jobs/typo.yml: lerning_rate is not a setting. Did you mean learning_rate?" in out
    assert "Traceback" not in out and jobs.s3_keys(bucket, "runs/typo/") == {}
