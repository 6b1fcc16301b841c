"""FT_CONFIG: settings from a YAML or JSON file, below the environment and hyperparameters."""

from pathlib import Path

import pytest

from entrypoint.__main__ import main
from entrypoint.config import files
from entrypoint.config.platform import Runtime, SageMakerPaths
from entrypoint.config.settings import load_settings, trainer_overrides
from entrypoint.errors import SettingsError

URI = "s3://b/jobs/sst2.yaml"
BASE = "model: s3://b/models/m/\ntrain_data: s3://b/data/train.csv\n"


def reader(**texts):
    """A read_config for load_settings: the given files by URI, None for any other."""
    return lambda uri: texts[uri].encode() if uri in texts else None


def problems(environ, runtime=Runtime("local"), read=None):
    with pytest.raises(SettingsError) as info:
        load_settings(environ, runtime, read)
    return info.value.problems


def sagemaker(**hyperparameters):
    paths = SageMakerPaths(base=Path("/opt/ml"), channels=("train",))
    return Runtime("sagemaker", sagemaker=paths, hyperparameters=hyperparameters)


def test_environment_beats_hyperparameters_beats_the_file_beats_defaults():
    text = BASE + "learning_rate: 0.1\nnum_train_epochs: 5\nseed: 11\noutput_uri: s3://b/out/\n"
    runtime = sagemaker(learning_rate="0.2", num_train_epochs="2", config=URI)
    s = load_settings({"FT_LEARNING_RATE": "0.5"}, runtime, reader(**{URI: text}))
    assert s.learning_rate == 0.5  # environment
    assert s.num_train_epochs == 2.0  # hyperparameter over the file
    assert s.seed == 11  # the file
    assert s.output_uri == "s3://b/out/"  # the file over the platform default (/opt/ml/model)
    assert s.checkpoint_uri == "/opt/ml/checkpoints"  # platform default, the file says nothing
    assert s.lora_dropout == 0.05 and s.weight_decay is None  # defaults
    assert s.config == URI


def test_the_environment_names_the_file_before_a_hyperparameter():
    other = "s3://b/jobs/other.yaml"
    s = load_settings({"FT_CONFIG": URI}, sagemaker(config=other), reader(**{URI: BASE + "seed: 1\n", other: "x: 1"}))
    assert s.seed == 1


def test_yaml_values_are_read_as_the_variables_would_be():
    text = BASE + (
        "LEARNING_RATE: 3e-5\n"  # upper case; PyYAML reads 3e-5 as text, pydantic as a number
        "bf16: false\n"
        "report_to: [tensorboard]\n"
        "lora_r: 8\n"
        "lora_target_modules:\n  - query\n  - value\n"
        "eval_data: null\n"  # null: unset
        "tune_search_space:\n  learning_rate: {low: 1.0e-5, high: 1.0e-4, log: true}\n"
    )
    s = load_settings({"FT_CONFIG": URI}, Runtime("local"), reader(**{URI: text}))
    assert trainer_overrides(s) == {"learning_rate": 3e-5, "bf16": False, "report_to": ["tensorboard"]}
    assert s.lora_target_modules == ["query", "value"] and s.lora_r == 8 and s.eval_data is None
    assert s.tune_search_space == '{"learning_rate": {"low": 1e-05, "high": 0.0001, "log": true}}'


def test_a_json_file_is_read_with_json():
    uri = "/jobs/sst2.json"
    s = load_settings(
        {"FT_CONFIG": uri},
        Runtime("local"),
        reader(**{uri: '{"model": "m", "train_data": "t.csv", "save_steps": 20}'}),
    )
    assert s.save_steps == 20


def test_unknown_and_refused_keys_name_the_file_and_the_key_with_a_did_you_mean():
    found = problems({"FT_CONFIG": URI}, read=reader(**{URI: BASE + "lerning_rate: 1e-4\noutput_dir: /x\nzzz: 1\n"}))
    assert f"FT_CONFIG {URI}: lerning_rate is not a setting. Did you mean learning_rate?" in found
    assert f"FT_CONFIG {URI}: zzz is not a setting." in found
    assert any(p.startswith(f"FT_CONFIG {URI}: output_dir cannot be set: ") for p in found), found


def test_an_invalid_value_names_the_file_unless_a_variable_overrides_it():
    read = reader(**{URI: BASE + "save_steps: ten\n"})
    [problem] = problems({"FT_CONFIG": URI}, read=read)
    assert problem.startswith(f"FT_CONFIG {URI}: save_steps is invalid") and "'ten'" in problem
    assert load_settings({"FT_CONFIG": URI, "FT_SAVE_STEPS": "10"}, Runtime("local"), read).save_steps == 10


def test_problems_in_the_file_and_in_the_variables_are_reported_together():
    found = problems({"FT_CONFIG": URI, "FT_SEED": "x"}, read=reader(**{URI: "model: m\nlerning_rate: 1\n"}))
    text = "\n".join(found)
    assert "FT_SEED is invalid" in text and "lerning_rate is not a setting" in text
    assert "FT_TRAIN_DATA is required" in text


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("model: [unclosed\n", f"FT_CONFIG {URI} is not valid YAML"),
        ("- model: m\n", f"FT_CONFIG {URI} must hold a mapping of settings"),
        ("seed: 1\nSEED: 2\n", f"FT_CONFIG {URI}: SEED is given twice"),
        ("config: s3://b/other.yaml\n", f"FT_CONFIG {URI}: config cannot be set in a config file"),
    ],
)
def test_a_file_that_is_not_a_mapping_of_settings_is_a_settings_error(text, fragment):
    found = problems({"FT_CONFIG": URI}, read=reader(**{URI: BASE + text if "model" not in text else text}))
    assert any(fragment in p for p in found), found


def test_bad_json_names_the_file_and_the_line():
    problem, *missing = problems({"FT_CONFIG": "/j.json"}, read=reader(**{"/j.json": '{"model": "m",\n "seed": }'}))
    assert problem.startswith("FT_CONFIG /j.json is not valid JSON") and "line 2" in problem


def test_a_missing_file_is_reported():
    found = problems({"FT_CONFIG": URI}, read=reader())
    assert f"FT_CONFIG {URI} does not exist: give the path or s3:// URI of a YAML or JSON file." in found


def test_without_a_reader_a_local_file_is_read(tmp_path):
    path = tmp_path / "job.yml"
    path.write_text(BASE + "seed: 3\n")
    assert load_settings({"FT_CONFIG": str(path)}, Runtime("local")).seed == 3


def test_a_bad_yaml_file_fails_finetune_train_with_exit_64_naming_the_file(tmp_path, capsys, caplog):
    path = tmp_path / "job.yaml"
    path.write_text("model: m\ntrain_data: [t.csv\n")
    assert main(["train"], {"FT_CONFIG": str(path)}) == 64
    logged = caplog.text + capsys.readouterr().err
    assert f"FT_CONFIG {path} is not valid YAML" in logged and "Traceback" not in logged


def test_values_become_the_text_of_a_variable():
    assert files.as_setting_text(True) == "true"
    assert files.as_setting_text(3) == "3"
    assert files.as_setting_text(["a", 1, False]) == ["a", "1", "false"]
    assert files.as_setting_text({"stage": 2}) == '{"stage": 2}'
