"""The search as pure decisions: which settings are searched and how, the objective and its
direction, each trial's settings, whether a stored study can be continued, and tune.json."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Mapping
from typing import Any

from entrypoint.errors import SettingsError

log = logging.getLogger(__name__)

STUDY_NAME = "finetune"
# Job settings (not TrainingArguments) that a trial may change; the rest name data, places or
# the search itself.
TUNABLE_JOB_SETTINGS = {"max_length", "mlm_probability", "lora_r", "lora_alpha", "lora_dropout", "packing"}

RETOKENIZE = {"max_length", "packing"}  # these change the tokenized data: tokenize per trial

DEFAULT_SPACE = {
    "learning_rate": {"low": 1e-5, "high": 1e-4, "log": True},
    "num_train_epochs": {"choices": [1, 2, 3]},
    "weight_decay": {"low": 0.0, "high": 0.1},
    "warmup_steps": {"low": 0.0, "high": 0.1},  # below 1 it is a fraction of the steps (transformers 5)
}

MAXIMIZED = ("accuracy", "f1", "bleu", "rouge", "precision", "recall", "matthews", "exact_match", "auc")

MINIMIZED = ("loss", "perplexity", "error", "wer", "cer")

SPEC_FORM = '{"low": L, "high": H, "log": true|false} or {"choices": [...]}'


@dataclasses.dataclass(frozen=True)
class Param:
    """One searched setting: an int or float range, or a list of choices."""

    name: str
    kind: str  # "int", "float" or "choices"
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    choices: tuple = ()

    def suggest(self, trial) -> Any:
        if self.kind == "int":
            return trial.suggest_int(self.name, self.low, self.high, log=self.log)
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log)
        return trial.suggest_categorical(self.name, list(self.choices))

    def spec(self) -> dict:
        if self.kind == "choices":
            return {"choices": list(self.choices)}
        return {"low": self.low, "high": self.high, "log": self.log}


@dataclasses.dataclass(frozen=True)
class Plan:
    metric: str
    direction: str
    space: tuple[Param, ...]
    trials: int

    def identity(self) -> dict:
        """What must not change between an interrupted search and its resumption."""
        return {"metric": self.metric, "direction": self.direction, "space": {p.name: p.spec() for p in self.space}}


def objective_metric(setting: str | None, task_metric: str) -> str:
    """FT_TUNE_METRIC with the `eval_` prefix the evaluation adds, or the task's metric."""
    name = setting or task_metric
    return name if name.startswith("eval_") else f"eval_{name}"


def default_direction(metric: str) -> str | None:
    """maximize for accuracy/F1/BLEU-like metrics, minimize for losses and perplexity, else None."""

    def names(words):  # a word at the start of a `_`-separated part: eval_rougeL yes, eval_lower no
        return re.search(rf"(?:^|_)(?:{'|'.join(words)})", metric.lower())

    if names(MINIMIZED):
        return "minimize"
    if names(MAXIMIZED):
        return "maximize"
    return None


def default_space(fixed: set[str]) -> dict:
    """DEFAULT_SPACE without the settings the user fixed (FT_MAX_STEPS fixes the epochs too)."""
    if "max_steps" in fixed:
        fixed = fixed | {"num_train_epochs"}
    return {name: spec for name, spec in DEFAULT_SPACE.items() if name not in fixed}


def parse_space(space: Mapping[str, Any]) -> tuple[list[Param], list[str]]:
    """The searched settings, and every problem with them (names, forms, bounds, types)."""
    from entrypoint.config.settings import check_setting_names, settings_class

    params: list[Param] = []
    problems: list[str] = []
    if not space:
        problems.append(
            "FT_TUNE_SEARCH_SPACE names no setting: give at least one, e.g. "
            f"{json.dumps({'learning_rate': DEFAULT_SPACE['learning_rate']})}."
        )
    for name, spec in space.items():
        wrong_name = check_setting_names([name])
        found = (
            f"FT_TUNE_SEARCH_SPACE: {wrong_name[0]}"
            if wrong_name
            else parse_param(name, spec, settings_class().model_fields[name])
        )
        if isinstance(found, str):
            problems.append(found)
        else:
            params.append(found)
    return params, problems


def parse_param(name: str, spec: Any, field) -> Param | str:
    """One searched setting (`field` is its pydantic field), or the problem with it."""
    import typing

    import pydantic

    from entrypoint.config.settings import JobSettings

    def invalid(value) -> str | None:
        if value is None or isinstance(value, (list, dict)):
            return "must be a number, string or boolean"
        try:
            adapter.validate_python(value, strict=True)
        except pydantic.ValidationError as exc:
            return exc.errors()[0]["msg"].lower()
        return None

    where = f"FT_TUNE_SEARCH_SPACE: {name}"
    if name in JobSettings.model_fields and name not in TUNABLE_JOB_SETTINGS:
        return (
            f"{where} cannot be searched: "
            f"only TrainingArguments fields and {', '.join(sorted(TUNABLE_JOB_SETTINGS))} can."
        )
    if not isinstance(spec, dict) or set(spec) not in ({"choices"}, {"low", "high"}, {"low", "high", "log"}):
        return f"{where} must be {SPEC_FORM}; got {json.dumps(spec)}."
    adapter = pydantic.TypeAdapter(typing.Annotated[field.annotation, field])
    if "choices" in spec:
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            return f"{where}: choices must be a non-empty list; got {json.dumps(choices)}."
        for choice in choices:
            if why := invalid(choice):
                return f"{where}: choice {json.dumps(choice)} is not a valid value ({why})."
        if len({json.dumps(c) for c in choices}) != len(choices):
            return f"{where}: choices repeat a value; list each once."
        return Param(name, "choices", choices=tuple(choices))
    members = set(typing.get_args(field.annotation)) - {type(None)} or {field.annotation}
    kind = {frozenset({int}): "int", frozenset({float}): "float"}.get(frozenset(members))
    low, high, use_log = spec["low"], spec["high"], spec.get("log", False)
    if kind is None:
        return f'{where} is not a number: search it with {{"choices": [...]}}.'
    if not isinstance(use_log, bool):
        return f"{where}: log must be true or false; got {json.dumps(use_log)}."
    for label, value in (("low", low), ("high", high)):
        if why := ("a boolean" if isinstance(value, bool) else invalid(value)):
            expected = "an integer" if kind == "int" else "a number"
            return f"{where}: {label} must be {expected} valid for the setting ({why}); got {json.dumps(value)}."
    if not low < high:
        return f"{where}: low must be below high; got low={low}, high={high}."
    if use_log and low <= 0:
        return f"{where}: a log range needs low > 0; got low={low}."
    return Param(name, kind, low, high, use_log)


def plan(settings, task_metric: str) -> Plan:
    """The search the settings ask for; SettingsError lists every problem (before any download)."""
    from entrypoint.config.settings import trainer_overrides

    problems = []
    if not (settings.eval_data or settings.validation_split):
        problems.append("finetune tune scores each trial on evaluation data: set FT_EVAL_DATA or FT_VALIDATION_SPLIT.")
    metric = objective_metric(settings.tune_metric, task_metric)
    direction = settings.tune_direction or default_direction(metric)
    if direction is None:
        problems.append(
            f"FT_TUNE_DIRECTION: cannot tell whether {metric} should go up or down; "
            "set FT_TUNE_DIRECTION=maximize or minimize."
        )
    fixed = set(trainer_overrides(settings)) | (settings.model_fields_set & TUNABLE_JOB_SETTINGS)
    params: list[Param] = []
    if settings.tune_search_space is None:
        params, space_problems = parse_space(default_space(fixed))
        if not params:
            space_problems = [
                f"Every setting of the default search ({', '.join(DEFAULT_SPACE)}) is fixed by a FT_* variable: "
                "set FT_TUNE_SEARCH_SPACE."
            ]
        problems += space_problems
    else:
        try:
            space = json.loads(settings.tune_search_space)
        except json.JSONDecodeError as exc:
            problems.append(
                f"FT_TUNE_SEARCH_SPACE is not valid JSON ({exc}); expected e.g. "
                f"{json.dumps({'learning_rate': DEFAULT_SPACE['learning_rate']})}."
            )
        else:
            if isinstance(space, dict):
                params, space_problems = parse_space(space)
                problems += space_problems
            else:
                problems.append(f"FT_TUNE_SEARCH_SPACE must be a JSON object of setting name -> {SPEC_FORM}.")
    if problems:
        raise SettingsError(problems)
    assert direction is not None  # else a problem was reported above
    overridden = sorted(fixed & {p.name for p in params})
    if overridden:
        log.warning("the search replaces %s in every trial", ", ".join(f"FT_{n.upper()}" for n in overridden))
    return Plan(metric, direction, tuple(params), settings.tune_trials)


def as_setting(value: Any) -> str:
    """A searched value as an FT_* variable's text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def trial_environ(environ: Mapping[str, str], params: dict, keep_checkpoints: bool) -> dict[str, str]:
    """The job's variables with the trial's values. Trials save no checkpoints unless the best one
    is loaded at the end: an interrupted trial is run again from its start."""
    env = dict(environ)
    if not keep_checkpoints:
        env["FT_SAVE_STRATEGY"] = "no"
    env.update({f"FT_{name.upper()}": as_setting(value) for name, value in params.items()})
    return env


def progress(states: list[str], wanted: int) -> tuple[int, int]:
    """(trials done, trials still to run). Pruned trials are done; failed ones are not."""
    done = sum(1 for s in states if s in ("COMPLETE", "PRUNED"))
    return done, max(0, wanted - done)


def resume_problem(stored: dict | None, current: dict) -> str | None:
    """Why a study found at FT_CHECKPOINT_URI cannot be continued with these settings."""
    if stored is None or stored == current:
        return None
    return (
        "FT_CHECKPOINT_URI (default: checkpoints/ under FT_OUTPUT_URI) already holds a search of "
        f"{stored.get('metric')} ({stored.get('direction')}) over "
        f"{json.dumps(stored.get('space'))}; these settings ask for {current['metric']} ({current['direction']}) over "
        f"{json.dumps(current['space'])}. Use another FT_OUTPUT_URI, or the earlier FT_TUNE_* settings to resume."
    )


def report(trials: list, plan_: Plan) -> dict:
    """tune.json: every finished trial and the best one (pure: `trials` are Optuna FrozenTrials)."""
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED", "FAIL")]
    rows = [
        {
            "number": t.number,
            "state": t.state.name,
            "value": t.value,
            "params": t.params,
            "metrics": t.user_attrs.get("metrics"),
            "retry_of": t.user_attrs.get("retry_of"),
            "duration_s": round(t.duration.total_seconds(), 3) if t.duration else None,
        }
        for t in finished
    ]
    complete = [t for t in finished if t.state.name == "COMPLETE" and t.value is not None]
    best = None
    if complete:
        pick = max if plan_.direction == "maximize" else min
        top = pick(complete, key=lambda t: t.value)
        best = {
            "trial": top.number,
            "value": top.value,
            "params": top.params,
            "settings": {f"FT_{k.upper()}": as_setting(v) for k, v in top.params.items()},
        }
    done, remaining = progress([t.state.name for t in trials], plan_.trials)
    return {
        "study": STUDY_NAME,
        **plan_.identity(),
        "n_trials": plan_.trials,
        "done": done,
        "finished": remaining == 0,
        "best": best,
        "trials": rows,
    }
