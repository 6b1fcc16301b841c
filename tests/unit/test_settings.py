import pytest

from entrypoint.config.platform import Runtime, SageMakerPaths
from entrypoint.config.settings import check_setting_names, checkpoint_uri, load_settings, trainer_overrides
from entrypoint.errors import SettingsError

BASE = {"FT_MODEL": "s3://b/models/m/", "FT_TRAIN_DATA": "s3://b/data/train.csv"}
LOCAL = Runtime("local")


def problems(environ, runtime=LOCAL):
    with pytest.raises(SettingsError) as info:
        load_settings(environ, runtime)
    return info.value.problems


def test_trainer_arguments_are_settings_under_their_own_names():
    s = load_settings(
        {
            **BASE,
            "FT_LEARNING_RATE": "3e-5",
            "FT_SAVE_STEPS": "50",
            "FT_GRADIENT_ACCUMULATION_STEPS": "4",
            "FT_LR_SCHEDULER_TYPE": "cosine",
            "FT_REPORT_TO": "tensorboard",
            "FT_BF16": "false",
        },
        LOCAL,
    )
    assert trainer_overrides(s) == {
        "learning_rate": 3e-5,
        "save_steps": 50,
        "gradient_accumulation_steps": 4,
        "lr_scheduler_type": "cosine",
        "report_to": ["tensorboard"],
        "bf16": False,
    }


def test_every_problem_is_reported_at_once_with_the_variable_and_the_fix():
    found = problems({"FT_MODEL": "m", "FT_SAVE_STEPS": "ten", "FT_LERNING_RATE": "1e-4", "FT_OUTPUT_DIR": "/x"})
    text = "\n".join(found)
    assert len(found) == 4, text
    assert "FT_TRAIN_DATA is required" in text
    assert "FT_SAVE_STEPS is invalid" in text and "'ten'" in text
    assert "Did you mean FT_LEARNING_RATE?" in text
    assert "FT_OUTPUT_DIR cannot be set" in text and "FT_OUTPUT_URI" in text


def test_unknown_name_without_a_close_match_gets_no_suggestion():
    [problem] = check_setting_names(["completely_unrelated"])
    assert problem == "FT_COMPLETELY_UNRELATED is not a setting."


def test_hyperparameters_json_supplies_settings_and_environment_wins():
    runtime = Runtime(
        "sagemaker",
        sagemaker=SageMakerPaths(base=__import__("pathlib").Path("/opt/ml"), channels=("train",)),
        hyperparameters={
            "model": "s3://b/m/",
            "learning_rate": 0.001,
            "num_train_epochs": "2",
            "sagemaker_region": "x",
        },
    )
    s = load_settings({"FT_LEARNING_RATE": "0.5"}, runtime)
    assert s.model == "s3://b/m/"
    assert s.learning_rate == 0.5
    assert s.num_train_epochs == 2.0
    assert s.train_data == "/opt/ml/input/data/train"
    assert s.output_uri == "/opt/ml/model"
    assert checkpoint_uri(s) == "/opt/ml/checkpoints"


def test_unknown_hyperparameter_is_reported():
    runtime = Runtime(
        "sagemaker",
        sagemaker=SageMakerPaths(base=__import__("pathlib").Path("/opt/ml"), channels=()),
        hyperparameters={"learnin_rate": "1"},
    )
    text = "\n".join(problems(BASE, runtime))
    assert "hyperparameter LEARNIN_RATE is not a setting" in text and "FT_LEARNING_RATE" in text


def test_checkpoint_uri_defaults_under_the_output():
    s = load_settings({**BASE, "FT_OUTPUT_URI": "s3://b/runs/1"}, LOCAL)
    assert checkpoint_uri(s) == "s3://b/runs/1/checkpoints/"


def test_batch_needs_an_s3_output():
    found = problems(BASE, Runtime("batch", job_id="j", attempt=1))
    assert any("FT_OUTPUT_URI must be an s3:// URI on AWS Batch" in p for p in found)


def test_evaluation_settings_need_evaluation_data():
    found = problems({**BASE, "FT_EVAL_STRATEGY": "steps"})
    assert any("FT_EVAL_STRATEGY=steps needs evaluation data" in p for p in found)


def test_both_eval_data_and_split_is_an_error():
    found = problems({**BASE, "FT_EVAL_DATA": "e.csv", "FT_VALIDATION_SPLIT": "0.1"})
    assert any("FT_VALIDATION_SPLIT and FT_EVAL_DATA" in p for p in found)


@pytest.mark.parametrize("value", ["0", "1", "1.5", "-0.1"])
def test_validation_split_must_be_a_fraction(value):
    found = problems({**BASE, "FT_VALIDATION_SPLIT": value})
    assert any(p.startswith("FT_VALIDATION_SPLIT is invalid") for p in found)
