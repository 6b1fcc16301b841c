"""`finetune submit --config FILE`: the file's keys are checked before anything is sent; a local
file's settings travel like --set ones, an S3 URI travels as FT_CONFIG."""

import boto3
import pytest

from entrypoint.errors import UserError
from tests.unit.test_submit import BATCH_ARGV, SAGEMAKER_ARGV, run_dry


def test_a_local_file_is_sent_as_settings_below_set(tmp_path, capsys):
    path = tmp_path / "job.yaml"
    path.write_text("model: s3://b/m/\nLEARNING_RATE: 1e-4\nreport_to: [mlflow]\nbf16: true\n")
    request = run_dry([*SAGEMAKER_ARGV, "--config", str(path), "--set", "FT_LEARNING_RATE=3e-5"], capsys)
    assert request["HyperParameters"] == {
        "model": "s3://b/m/",
        "learning_rate": "3e-5",
        "report_to": '["mlflow"]',
        "bf16": "true",
    }


def test_unknown_keys_in_a_local_file_are_refused_naming_the_file(tmp_path, capsys):
    path = tmp_path / "job.yaml"
    path.write_text("model: s3://b/m/\nlerning_rate: 1e-4\n")
    with pytest.raises(UserError) as info:
        run_dry([*BATCH_ARGV, "--config", str(path)], capsys)
    assert f"--config {path}: lerning_rate is not a setting. Did you mean learning_rate?" in str(info.value)


def test_a_missing_local_file_is_refused(tmp_path, capsys):
    with pytest.raises(UserError, match="no such file"):
        run_dry([*BATCH_ARGV, "--config", str(tmp_path / "nope.yaml")], capsys)


def test_an_s3_file_is_checked_and_sent_as_ft_config(aws_env, bucket, capsys):
    s3 = boto3.client("s3")
    s3.put_object(Bucket=bucket, Key="jobs/good.yaml", Body=b"model: s3://b/m/\nseed: 3\n")
    s3.put_object(Bucket=bucket, Key="jobs/typo.yaml", Body=b"sead: 3\n")
    request = run_dry([*BATCH_ARGV, "--config", f"s3://{bucket}/jobs/good.yaml"], capsys)
    environment = {e["name"]: e["value"] for e in request["containerOverrides"]["environment"]}
    assert environment["FT_CONFIG"] == f"s3://{bucket}/jobs/good.yaml" and "FT_SEED" not in environment

    with pytest.raises(UserError, match=f"--config s3://{bucket}/jobs/typo.yaml: sead is not a setting"):
        run_dry([*BATCH_ARGV, "--config", f"s3://{bucket}/jobs/typo.yaml"], capsys)
