import json

import pytest

from entrypoint.config.platform import Runtime
from entrypoint.config.settings import load_settings
from entrypoint.durability.interruption import StopRequest
from entrypoint.errors import Interrupted, SettingsError
from entrypoint.io import storage
from entrypoint.tune import search as tune
from entrypoint.tune import space

BASE = {
    "FT_MODEL": "s3://b/models/m/",
    "FT_TRAIN_DATA": "s3://b/data/train.csv",
    "FT_EVAL_DATA": "s3://b/data/eval.csv",
}


def settings(**extra):
    return load_settings({**BASE, **{f"FT_{k.upper()}": v for k, v in extra.items()}}, Runtime("local"))


def plan_problems(task_metric="accuracy", **extra):
    with pytest.raises(SettingsError) as info:
        space.plan(settings(**extra), task_metric)
    return info.value.problems


def test_a_search_space_becomes_ranges_and_choices_typed_by_the_setting():
    params, problems = space.parse_space(
        {
            "learning_rate": {"low": 1e-5, "high": 1e-4, "log": True},
            "per_device_train_batch_size": {"choices": [8, 16]},
            "warmup_steps": {"low": 0, "high": 0.1},
            "lora_r": {"low": 4, "high": 32, "log": True},
            "lr_scheduler_type": {"choices": ["linear", "cosine"]},
        }
    )
    assert problems == []
    by_name = {p.name: p for p in params}
    assert by_name["learning_rate"] == space.Param("learning_rate", "float", 1e-5, 1e-4, True)
    assert by_name["per_device_train_batch_size"].choices == (8, 16)
    assert by_name["warmup_steps"].kind == "float"  # a float setting: int bounds still give floats
    assert by_name["lora_r"].kind == "int"
    assert by_name["lr_scheduler_type"].kind == "choices"


def test_every_search_space_problem_is_reported_at_once_with_the_fix():
    _, problems = space.parse_space(
        {
            "learnig_rate": {"low": 1e-5, "high": 1e-4},
            "output_dir": {"choices": ["a"]},
            "model": {"choices": ["a", "b"]},
            "weight_decay": {"low": 0.1},
            "num_train_epochs": {"low": 3, "high": 1},
            "adam_epsilon": {"low": 0, "high": 1e-6, "log": True},
            "per_device_train_batch_size": {"low": 4, "high": 8.5},
            "lr_scheduler_type": {"low": 1, "high": 2},
            "lora_r": {"choices": [0, 8]},
            "seed": {"choices": []},
            "gradient_accumulation_steps": {"choices": [1, 1]},
            "max_grad_norm": {"low": 0.5, "high": 2, "log": "yes"},
        }
    )
    text = "\n".join(problems)
    assert len(problems) == 12, text
    assert "FT_TUNE_SEARCH_SPACE: FT_LEARNIG_RATE is not a setting. Did you mean FT_LEARNING_RATE?" in text
    assert "FT_OUTPUT_DIR cannot be set" in text
    assert "model cannot be searched" in text
    assert (
        'weight_decay must be {"low": L, "high": H, "log": true|false} or {"choices": [...]}; got {"low": 0.1}' in text
    )
    assert "num_train_epochs: low must be below high; got low=3, high=1" in text
    assert "adam_epsilon: a log range needs low > 0" in text
    assert "per_device_train_batch_size: high must be an integer" in text
    assert "lr_scheduler_type is not a number: search it with" in text
    assert "lora_r: choice 0 is not a valid value (input should be greater than 0)" in text
    assert "seed: choices must be a non-empty list" in text
    assert "gradient_accumulation_steps: choices repeat a value" in text
    assert "max_grad_norm: log must be true or false" in text


def test_direction_follows_the_metric_unless_set():
    assert space.default_direction("eval_accuracy") == "maximize"
    assert space.default_direction("eval_f1_macro") == "maximize"
    assert space.default_direction("eval_bleu") == "maximize"
    assert space.default_direction("eval_loss") == "minimize"
    assert space.default_direction("eval_perplexity") == "minimize"
    assert space.default_direction("eval_rougeL") == "maximize"
    assert space.default_direction("eval_score") is None
    assert space.default_direction("eval_lower_is_nicer") is None  # not "wer"
    assert space.plan(settings(), "accuracy").direction == "maximize"
    assert space.plan(settings(), "loss").metric == "eval_loss"
    assert space.plan(settings(), "loss").direction == "minimize"
    chosen = space.plan(settings(tune_metric="f1_macro", tune_direction="minimize"), "accuracy")
    assert (chosen.metric, chosen.direction) == ("eval_f1_macro", "minimize")


def test_plan_problems_come_before_any_download_all_together():
    no_eval = {k: v for k, v in BASE.items() if k != "FT_EVAL_DATA"}
    with pytest.raises(SettingsError) as info:
        space.plan(
            load_settings(
                {**no_eval, "FT_TUNE_METRIC": "score", "FT_TUNE_SEARCH_SPACE": "{learning_rate: 1}"}, Runtime("local")
            ),
            "accuracy",
        )
    text = "\n".join(info.value.problems)
    assert len(info.value.problems) == 3, text
    assert "set FT_EVAL_DATA or FT_VALIDATION_SPLIT" in text
    assert "cannot tell whether eval_score should go up or down; set FT_TUNE_DIRECTION" in text
    assert "FT_TUNE_SEARCH_SPACE is not valid JSON" in text
    assert "must be a JSON object" in plan_problems(tune_search_space="[1, 2]")[0]
    assert "names no setting" in plan_problems(tune_search_space="{}")[0]


def test_default_space_leaves_out_what_the_user_fixed():
    assert {p.name for p in space.plan(settings(), "accuracy").space} == set(space.DEFAULT_SPACE)
    fixed = space.plan(settings(learning_rate="3e-5", max_steps="100"), "accuracy")
    assert {p.name for p in fixed.space} == {"weight_decay", "warmup_steps"}
    everything = plan_problems(learning_rate="3e-5", max_steps="100", weight_decay="0", warmup_steps="0")
    assert "set FT_TUNE_SEARCH_SPACE" in everything[0]


def test_a_trial_is_the_job_with_its_values_and_no_checkpoints():
    env = space.trial_environ(
        {"FT_LEARNING_RATE": "1e-3", "FT_SAVE_STEPS": "50"},
        {"learning_rate": 3.2e-05, "per_device_train_batch_size": 16, "packing": True},
        keep_checkpoints=False,
    )
    assert env == {
        "FT_LEARNING_RATE": "3.2e-05",
        "FT_SAVE_STEPS": "50",
        "FT_SAVE_STRATEGY": "no",
        "FT_PER_DEVICE_TRAIN_BATCH_SIZE": "16",
        "FT_PACKING": "true",
    }
    assert "FT_SAVE_STRATEGY" not in space.trial_environ({}, {}, keep_checkpoints=True)
    trial_settings = load_settings({**BASE, **env}, Runtime("local"))
    assert trial_settings.learning_rate == 3.2e-05 and trial_settings.packing is True


def test_progress_counts_pruned_as_done_and_failed_as_to_run_again():
    assert space.progress([], 3) == (0, 3)
    assert space.progress(["COMPLETE", "FAIL", "PRUNED"], 3) == (2, 1)
    assert space.progress(["COMPLETE"] * 4, 3) == (4, 0)


def test_a_different_search_at_the_same_place_is_refused():
    current = {
        "metric": "eval_loss",
        "direction": "minimize",
        "space": {"learning_rate": {"low": 1e-5, "high": 1e-4, "log": True}},
    }
    assert space.resume_problem(None, current) is None
    assert space.resume_problem(dict(current), current) is None
    problem = space.resume_problem(dict(current, metric="eval_accuracy", direction="maximize"), current)
    assert "already holds a search of eval_accuracy (maximize)" in problem and "Use another FT_OUTPUT_URI" in problem


class FakeTrials:
    """Stands in for the training: a value per trial, or a stop request at a chosen trial."""

    def __init__(self, search, stop_at=None):
        self.search, self.stop_at, self.stop = search, stop_at, StopRequest()
        self.seen = []

    def run(self, trial):
        params = {p.name: p.suggest(trial) for p in self.search.space}
        self.seen.append(params)
        if trial.number == self.stop_at:
            self.stop.request("SIGTERM", 15)
            return tune.Outcome(interrupted=True)
        return tune.Outcome(value=params["learning_rate"] * 1000, metrics={"eval_loss": 0.5})


def open_study(tmp_path, work: str, search):
    import optuna

    (tmp_path / work).mkdir()
    records = tune.Records(
        storage.LocalStore(str(tmp_path / "checkpoints")),
        storage.LocalStore(str(tmp_path / "out")),
        tmp_path / work,
        search,
    )
    resumed = records.restore()
    study = optuna.create_study(
        storage=records.url(), study_name=space.STUDY_NAME, direction="maximize", load_if_exists=True
    )
    return records, study, resumed


def test_an_interrupted_search_resumes_with_the_interrupted_trial_first(tmp_path):
    search = space.plan(
        settings(tune_trials="3", tune_search_space=json.dumps({"learning_rate": {"low": 1e-5, "high": 1e-4}})),
        "accuracy",
    )
    output = storage.LocalStore(str(tmp_path / "out"))

    records, study, resumed = open_study(tmp_path, "work-1", search)
    assert not resumed
    fake = FakeTrials(search, stop_at=1)
    tune.run_trial(study, fake, records)
    with pytest.raises(Interrupted) as info:
        tune.run_trial(study, fake, records)
    assert info.value.exit_code == 143
    first = json.loads(output.read_bytes("tune.json"))
    assert [(t["number"], t["state"]) for t in first["trials"]] == [(0, "COMPLETE"), (1, "FAIL")]
    assert first["done"] == 1 and not first["finished"]
    assert output.read_bytes("optuna.db") is None  # resume state lives with the checkpoints until the end

    records, study, resumed = open_study(tmp_path, "work-2", search)  # a new machine: only the stores survive
    assert resumed
    done, remaining = space.progress([t.state.name for t in study.get_trials()], search.trials)
    assert (done, remaining) == (1, 2)
    again = FakeTrials(search)
    for _ in range(remaining):
        tune.run_trial(study, again, records)
    assert again.seen[0] == fake.seen[1]  # the interrupted trial's values are run first
    final = records.save(study, final=True)
    assert json.loads(output.read_bytes("tune.json")) == json.loads(json.dumps(final))
    assert [(t["number"], t["state"], t["retry_of"]) for t in final["trials"]] == [
        (0, "COMPLETE", None),
        (1, "FAIL", None),
        (2, "COMPLETE", 1),
        (3, "COMPLETE", None),
    ]
    assert final["done"] == 3 and final["finished"]
    values = {t["number"]: t["value"] for t in final["trials"] if t["state"] == "COMPLETE"}
    best = max(values, key=values.get)
    assert final["best"]["trial"] == best
    assert final["best"]["settings"] == {"FT_LEARNING_RATE": repr(final["best"]["params"]["learning_rate"])}
    assert final["trials"][0]["metrics"] == {"eval_loss": 0.5}
    assert output.read_bytes("optuna.db")[:16] == b"SQLite format 3\x00"


def test_a_local_leftover_study_is_never_trusted(tmp_path):
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "optuna.db").write_bytes(b"stale")
    store = storage.LocalStore(str(tmp_path / "out"))
    records = tune.Records(store, store, tmp_path / "work", space.plan(settings(), "accuracy"))
    assert records.restore() is False
    assert not records.path.exists()


def test_bad_search_settings_fail_before_anything_is_touched(tmp_path):
    env = {
        **BASE,
        "FT_OUTPUT_URI": str(tmp_path / "out"),
        "FT_WORK_DIR": str(tmp_path / "work"),
        "FT_TUNE_SEARCH_SPACE": json.dumps({"learning_rate": {"low": 1e-4, "high": 1e-5}}),
    }
    from entrypoint.__main__ import tune as tune_command

    with pytest.raises(SettingsError) as info:
        tune_command(env, 0.0)
    assert "learning_rate: low must be below high" in str(info.value)
    assert not (tmp_path / "out").exists() and not (tmp_path / "work").exists()
