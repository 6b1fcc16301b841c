"""`finetune tune`: an Optuna search over the settings of the job that `finetune train` runs.

Each trial is the training job with some settings replaced (same data, task and base model, the
pipeline's own functions), trained from the seeded base model and scored on the evaluation data.
Optuna is driven with ask/tell rather than `Trainer.hyperparameter_search`, so that a trial's
values go through the same settings validation as `finetune train`, and so that the study can be
saved after every trial and an interrupted trial recorded as failed and queued again.

Records (see `Records`):
    FT_CHECKPOINT_URI/optuna.db   the Optuna study (sqlite), uploaded after every trial: a rerun resumes from it
    FT_OUTPUT_URI/tune.json       every trial (number, state, params, value, metrics) and the best settings
    FT_OUTPUT_URI/optuna.db       the study when the search ends
"""
from __future__ import annotations

import dataclasses
import gc
import json
import logging
import re
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any, Mapping

from transformers import TrainerCallback

from . import reporting, runtime as platform, storage
from .errors import ExitCode, FinetuneError, Interrupted, SettingsError, UserError

log = logging.getLogger(__name__)

DB_KEY = "optuna.db"
REPORT_KEY = "tune.json"
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
    from .settings import check_setting_names, settings_class

    params, problems = [], []
    if not space:
        problems.append(f"FT_TUNE_SEARCH_SPACE names no setting: give at least one, e.g. {json.dumps({'learning_rate': DEFAULT_SPACE['learning_rate']})}.")
    for name, spec in space.items():
        wrong_name = check_setting_names([name])
        found = f"FT_TUNE_SEARCH_SPACE: {wrong_name[0]}" if wrong_name else parse_param(name, spec, settings_class().model_fields[name])
        (problems if isinstance(found, str) else params).append(found)
    return params, problems


def parse_param(name: str, spec: Any, field) -> Param | str:
    """One searched setting (`field` is its pydantic field), or the problem with it."""
    import typing

    import pydantic

    from .settings import JobSettings

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
        return f"{where} cannot be searched: only TrainingArguments fields and {', '.join(sorted(TUNABLE_JOB_SETTINGS))} can."
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
        return f"{where} is not a number: search it with {{\"choices\": [...]}}."
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
    from .settings import trainer_overrides

    problems = []
    if not (settings.eval_data or settings.validation_split):
        problems.append("finetune tune scores each trial on evaluation data: set FT_EVAL_DATA or FT_VALIDATION_SPLIT.")
    metric = objective_metric(settings.tune_metric, task_metric)
    direction = settings.tune_direction or default_direction(metric)
    if direction is None:
        problems.append(f"FT_TUNE_DIRECTION: cannot tell whether {metric} should go up or down; set FT_TUNE_DIRECTION=maximize or minimize.")
    fixed = set(trainer_overrides(settings)) | (settings.model_fields_set & TUNABLE_JOB_SETTINGS)
    params = []
    if settings.tune_search_space is None:
        params, space_problems = parse_space(default_space(fixed))
        if not params:
            space_problems = [f"Every setting of the default search ({', '.join(DEFAULT_SPACE)}) is fixed by a FT_* variable: set FT_TUNE_SEARCH_SPACE."]
        problems += space_problems
    else:
        try:
            space = json.loads(settings.tune_search_space)
        except json.JSONDecodeError as exc:
            problems.append(f"FT_TUNE_SEARCH_SPACE is not valid JSON ({exc}); expected e.g. {json.dumps({'learning_rate': DEFAULT_SPACE['learning_rate']})}.")
        else:
            if isinstance(space, dict):
                params, space_problems = parse_space(space)
                problems += space_problems
            else:
                problems.append(f"FT_TUNE_SEARCH_SPACE must be a JSON object of setting name -> {SPEC_FORM}.")
    if problems:
        raise SettingsError(problems)
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
    return (f"FT_CHECKPOINT_URI (default: checkpoints/ under FT_OUTPUT_URI) already holds a search of {stored.get('metric')} ({stored.get('direction')}) over "
            f"{json.dumps(stored.get('space'))}; these settings ask for {current['metric']} ({current['direction']}) over "
            f"{json.dumps(current['space'])}. Use another FT_OUTPUT_URI, or the earlier FT_TUNE_* settings to resume.")


def report(trials: list, plan_: Plan) -> dict:
    """tune.json: every finished trial and the best one (pure: `trials` are Optuna FrozenTrials)."""
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED", "FAIL")]
    rows = [{"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
             "metrics": t.user_attrs.get("metrics"), "retry_of": t.user_attrs.get("retry_of"),
             "duration_s": round(t.duration.total_seconds(), 3) if t.duration else None} for t in finished]
    complete = [t for t in finished if t.state.name == "COMPLETE" and t.value is not None]
    best = None
    if complete:
        pick = max if plan_.direction == "maximize" else min
        top = pick(complete, key=lambda t: t.value)
        best = {"trial": top.number, "value": top.value, "params": top.params,
                "settings": {f"FT_{k.upper()}": as_setting(v) for k, v in top.params.items()}}
    done, remaining = progress([t.state.name for t in trials], plan_.trials)
    return {"study": STUDY_NAME, **plan_.identity(), "n_trials": plan_.trials, "done": done,
            "finished": remaining == 0, "best": best, "trials": rows}


class Records:
    """The study's durable copy and the search's report.

    optuna.db is resume state, so it is kept where checkpoints are (FT_CHECKPOINT_URI; on SageMaker
    /opt/ml/checkpoints, which survives spot restarts, while /opt/ml/model is uploaded only at the
    end). tune.json, and at the end a copy of optuna.db, go to FT_OUTPUT_URI."""

    def __init__(self, state: storage.Store, output: storage.Store, folder: Path, search: Plan):
        self.state, self.output, self.search = state, output, search
        self.path = folder / DB_KEY
        self.snapshot = folder / f"{DB_KEY}.upload"

    def restore(self) -> bool:
        # The durable copy is the truth: a local leftover from another run is never reused.
        self.path.unlink(missing_ok=True)
        if DB_KEY not in self.state.list(DB_KEY):
            return False
        self.state.download_file(DB_KEY, self.path)
        return True

    def url(self) -> str:
        return f"sqlite:///{self.path}"

    def save(self, study, final: bool = False) -> dict:
        """Upload the study and write tune.json; returns the report."""
        # sqlite's backup API copies a consistent state even while the Optuna engine holds the file.
        with sqlite3.connect(self.path) as source, sqlite3.connect(self.snapshot) as target:
            source.backup(target)
        self.state.upload_file(self.snapshot, DB_KEY)
        result = report(study.get_trials(deepcopy=False), self.search)
        self.output.write_bytes(REPORT_KEY, json.dumps(result, indent=2, default=str).encode())
        if final:
            self.output.upload_file(self.snapshot, DB_KEY)
        return result

    def save_quietly(self, study) -> None:
        """After a trial: a failed upload is logged and the search goes on (the next trial's
        upload, or the last one, which must succeed, carries the study)."""
        try:
            self.save(study)
        except FinetuneError:
            log.warning("could not save the study to %s; will retry after the next trial", self.state.uri, exc_info=True)


def stop_exit_code(stop) -> ExitCode:
    return ExitCode.INTERRUPTED_SIGINT if stop.signal == signal.SIGINT else ExitCode.INTERRUPTED


def run(environ: Mapping[str, str], started: float) -> dict:
    """The search: settings → plan → study → data and model → trials → tune.json."""
    try:
        import optuna
    except ImportError:
        raise UserError("finetune tune needs Optuna: pip install 'finetune[tune]' (or pip install optuna).") from None

    from . import data, interruption, modeling, settings as config, tasks, training, workspace

    runtime = platform.detect(environ, platform.read_platform_files(environ))
    settings = config.load_settings(environ, runtime)
    logging.getLogger().setLevel(settings.log_level)
    task = tasks.get(settings.task)
    search = plan(settings, task.metric_for_best_model)
    work = workspace.prepare(settings.work_dir)
    base_args = training.training_arguments(settings, work.checkpoints, workspace.has_cuda(), task.seq2seq_arguments, task.metric_for_best_model)
    log.info("platform: %s; task: %s; search: %d trials, %s %s over %s", runtime.describe(), settings.task,
             search.trials, search.direction, search.metric, ", ".join(p.name for p in search.space))
    stop = interruption.StopRequest()
    interruption.install_signal_handlers(stop)
    poller = interruption.start_spot_poller(stop, environ, runtime, settings.spot_notice_poll_seconds)
    records = Records(storage.open_store(config.checkpoint_uri(settings), settings.transfer_concurrency),
                      storage.open_store(settings.output_uri, settings.transfer_concurrency), work.root, search)
    resumed = records.restore()
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    study = optuna.create_study(storage=records.url(), study_name=STUDY_NAME, direction=search.direction, load_if_exists=True,
                                sampler=optuna.samplers.TPESampler(seed=base_args.seed))
    problem = resume_problem(study.user_attrs.get("search"), search.identity())
    if problem:
        raise UserError(problem)
    study.set_user_attr("search", search.identity())
    done, remaining = progress([t.state.name for t in study.get_trials(deepcopy=False)], search.trials)
    log.info("%s: %d of %d trials done, %d to run", "resumed the study" if resumed else "new study", done, search.trials, remaining)
    if remaining:
        interruption.check_stop(stop, "before the search")
        prepared = task.prepare(data.load_splits(settings, work.root, task.columns(settings)), settings)
        model_dir = modeling.fetch_model(settings.model, work.root, settings.transfer_concurrency)
        tokenizer = modeling.load_tokenizer(model_dir, settings.model)
        trials = Trials(environ, runtime, settings, task, search, prepared, model_dir, tokenizer, stop)
        for _ in range(remaining):
            if stop.is_set():
                records.save(study)  # the finished trials must be durable before the exit
            interruption.check_stop(stop, "between trials")
            run_trial(study, trials, records)
    if poller:
        poller.close()
    result = records.save(study, final=True)
    if result["best"]:
        print(reporting.format_metrics({"best_trial": result["best"]["trial"], "best_objective": result["best"]["value"]}), flush=True)
    log.info("done in %.0f s: %d of %d trials; best %s; tune.json and optuna.db at %s", time.monotonic() - started, result["done"],
             search.trials, json.dumps(result["best"]["params"]) if result["best"] else "none (no trial completed)", records.output.uri)
    return result


def run_trial(study, trials: "Trials", records: Records) -> None:
    """One trial, told to the study, then the study and tune.json saved."""
    from optuna.trial import TrialState

    trial = study.ask()
    try:
        outcome = trials.run(trial)
    except BaseException:
        study.tell(trial, state=TrialState.FAIL)
        records.save_quietly(study)
        raise
    if outcome.interrupted:
        trial.set_user_attr("interrupted", True)
        study.tell(trial, state=TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        records.save(study)  # must succeed: it is what the rerun resumes from
        log.warning("stop requested (%s) in trial %d: recorded as failed, queued to run again on resume",
                    trials.stop.reason, trial.number)
        raise Interrupted(trials.stop.reason or "a stop request", stop_exit_code(trials.stop))
    if outcome.metrics:
        trial.set_user_attr("metrics", outcome.metrics)
    if outcome.pruned:
        study.tell(trial, state=TrialState.PRUNED)
    else:
        study.tell(trial, outcome.value)
    line = {"trial": trial.number, "objective": outcome.value, **({"pruned": 1} if outcome.pruned else {})}
    print(reporting.format_metrics(line), flush=True)
    records.save_quietly(study)


@dataclasses.dataclass
class Outcome:
    value: float | None = None
    metrics: dict | None = None
    pruned: bool = False
    interrupted: bool = False


class Trials:
    """Runs one trial: the job's settings with the trial's values, the seeded base model, the
    task's Trainer, then an evaluation."""

    def __init__(self, environ, runtime, settings, task, search: Plan, prepared, model_dir, tokenizer, stop):
        self.environ, self.runtime, self.settings, self.task, self.search = environ, runtime, settings, task, search
        self.prepared, self.model_dir, self.tokenizer, self.stop = prepared, model_dir, tokenizer, stop
        self.per_trial_data = bool(RETOKENIZE & {p.name for p in search.space})
        self.data = None if self.per_trial_data else self.tokenize(settings)

    def tokenize(self, settings):
        prepared, task = self.prepared, self.task
        train_ds = task.tokenize(prepared.train, self.tokenizer, settings, prepared.info)
        eval_ds = task.tokenize(prepared.eval, self.tokenizer, settings, prepared.info)
        return train_ds, eval_ds

    def run(self, trial) -> Outcome:
        from . import adapters, interruption, settings as config, training, workspace

        params = {p.name: p.suggest(trial) for p in self.search.space}
        log.info("trial %d: %s", trial.number, json.dumps(params))
        keep = bool(config.trainer_overrides(self.settings).get("load_best_model_at_end"))
        settings = config.load_settings(trial_environ(self.environ, params, keep), self.runtime)
        work = workspace.prepare(settings.work_dir)  # fresh scratch folders for each trial
        task, info = self.task, self.prepared.info
        args = training.training_arguments(settings, work.checkpoints, workspace.has_cuda(), task.seq2seq_arguments, task.metric_for_best_model)
        model = adapters.apply(task.load_model(self.model_dir, settings.model, info, settings, args.seed), settings)
        train_ds, eval_ds = self.tokenize(settings) if self.per_trial_data else self.data
        stopper = interruption.StopOnRequest(self.stop)
        pruner = PruneOnEvaluation(trial, self.search.metric)
        callbacks = [stopper, SkipStopCheckpoint(stopper), training.MetricLines(), pruner, *training.extra_callbacks(settings)]
        trainer = training.build_trainer(task, settings, info, args, model, self.tokenizer, train_ds, eval_ds, callbacks)
        try:
            trainer.train()
            if stopper.stopped_at_step is not None:
                return Outcome(interrupted=True)
            if pruner.pruned:
                return Outcome(value=pruner.last_value, pruned=True)
            trainer.remove_callback(pruner)  # the final evaluation decides; it is not a pruning point
            metrics = trainer.evaluate()
        finally:
            release(trainer)
        if self.search.metric not in metrics:
            raise UserError(f"FT_TUNE_METRIC: the evaluation returned no {self.search.metric}; it returned "
                            f"{', '.join(sorted(metrics))}. Set FT_TUNE_METRIC to one of them.")
        return Outcome(value=float(metrics[self.search.metric]), metrics=jsonable(metrics))


def jsonable(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}


def release(trainer) -> None:
    """Free the trial's model and optimizer before the next trial loads its own."""
    import torch

    trainer.model = trainer.model_wrapped = trainer.optimizer = trainer.lr_scheduler = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class PruneOnEvaluation(TrainerCallback):
    """Reports each in-training evaluation to Optuna and stops a trial its pruner gives up on
    (only with FT_EVAL_STRATEGY=steps|epoch: otherwise the single final evaluation decides)."""

    def __init__(self, trial, metric: str):
        self.trial, self.metric = trial, metric
        self.pruned = False
        self.last_value: float | None = None

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if metrics and self.metric in metrics:
            self.last_value = float(metrics[self.metric])
            self.trial.report(self.last_value, state.global_step)
            if self.trial.should_prune():
                log.info("trial %d pruned at step %d (%s=%.6g)", self.trial.number, state.global_step, self.metric, self.last_value)
                self.pruned = True
                control.should_training_stop = True
        return control


class SkipStopCheckpoint(TrainerCallback):
    """Cancels the checkpoint StopOnRequest asks for: an interrupted trial is run again from its
    start, so saving would only spend the time the spot notice leaves."""

    def __init__(self, stopper):
        self.stopper = stopper

    def on_step_end(self, args, state, control, **kwargs):
        if self.stopper.stopped_at_step is not None:
            control.should_save = False
        return control
