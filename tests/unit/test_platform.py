import json
from pathlib import Path

from entrypoint.config.platform import decode_hyperparameters, detect, read_platform_files


def test_local_by_default():
    assert detect({}, {}).platform == "local"


def test_batch_from_its_variables():
    rt = detect({"AWS_BATCH_JOB_ID": "abc", "AWS_BATCH_JOB_ATTEMPT": "3"}, {})
    assert (rt.platform, rt.job_id, rt.attempt) == ("batch", "abc", 3)


def test_sagemaker_from_its_config_files(tmp_path):
    config = tmp_path / "input" / "config"
    config.mkdir(parents=True)
    (config / "resourceconfig.json").write_text(json.dumps({"current_host": "algo-1", "hosts": ["algo-1", "algo-2"]}))
    (config / "inputdataconfig.json").write_text(json.dumps({"train": {}, "validation": {}, "model": {}}))
    (config / "hyperparameters.json").write_text(json.dumps({"learning_rate": "3e-05", "model": '"s3://b/m/"'}))
    environ = {"SAGEMAKER_BASE_DIR": str(tmp_path), "TRAINING_JOB_NAME": "job-1"}
    rt = detect(environ, read_platform_files(environ))
    assert rt.platform == "sagemaker" and rt.job_id == "job-1"
    assert rt.hosts == ("algo-1", "algo-2") and rt.current_host == "algo-1"
    assert rt.hyperparameters == {"learning_rate": 3e-05, "model": "s3://b/m/"}
    assert rt.platform_defaults() == {
        "output_uri": str(tmp_path / "model"),
        "checkpoint_uri": str(tmp_path / "checkpoints"),
        "train_data": str(tmp_path / "input/data/train"),
        "eval_data": str(tmp_path / "input/data/validation"),
        "model": str(tmp_path / "input/data/model"),
    }
    assert rt.sagemaker.failure_file == Path(tmp_path) / "output" / "failure"


def test_hyperparameters_keep_plain_strings():
    assert decode_hyperparameters({"a": "cosine", "b": "1", "c": '["x"]'}) == {"a": "cosine", "b": 1, "c": ["x"]}
