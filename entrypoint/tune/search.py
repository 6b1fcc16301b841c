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
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path

from transformers import TrainerCallback

from entrypoint import reporting
from entrypoint.config.settings import checkpoint_uri as config_checkpoint_uri
from entrypoint.errors import FinetuneError, UserError
from entrypoint.io import storage
from entrypoint.tune.space import RETOKENIZE, STUDY_NAME, Plan, plan, progress, report, resume_problem, trial_environ

log = logging.getLogger(__name__)

DB_KEY = "optuna.db"
REPORT_KEY = "tune.json"


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
            log.warning(
                "could not save the study to %s; will retry after the next trial", self.state.uri, exc_info=True
            )


def run(environ: Mapping[str, str], runtime, settings, started: float) -> dict:
    """The search: plan → study → the job's own setup (data and model) → trials → tune.json."""
    try:
        import optuna
    except ImportError:
        raise UserError(
            "finetune tune needs Optuna: pip install 'finetune[train,tune]' (or pip install optuna)."
        ) from None

    from entrypoint.durability import interruption
    from entrypoint.job.recipe import TrainingJob

    job = TrainingJob(environ, runtime, settings, started)  # its setup phases, without its training
    task = job.task
    search = plan(settings, task.metric_for_best_model)
    log.info(
        "platform: %s; task: %s; search: %d trials, %s %s over %s",
        runtime.describe(),
        settings.task,
        search.trials,
        search.direction,
        search.metric,
        ", ".join(p.name for p in search.space),
    )
    try:
        job.setup_signals()
        job.setup_workspace()
        records = Records(
            storage.open_store(config_checkpoint_uri(settings), settings.transfer_concurrency),
            storage.open_store(settings.output_uri, settings.transfer_concurrency),
            job.work.root,
            search,
        )
        resumed = records.restore()
        optuna.logging.disable_default_handler()
        optuna.logging.enable_propagation()
        study = optuna.create_study(
            storage=records.url(),
            study_name=STUDY_NAME,
            direction=search.direction,
            load_if_exists=True,
            sampler=optuna.samplers.TPESampler(seed=job.args.seed),
        )
        problem = resume_problem(study.user_attrs.get("search"), search.identity())
        if problem:
            raise UserError(problem)
        study.set_user_attr("search", search.identity())
        done, remaining = progress([t.state.name for t in study.get_trials(deepcopy=False)], search.trials)
        log.info(
            "%s: %d of %d trials done, %d to run",
            "resumed the study" if resumed else "new study",
            done,
            search.trials,
            remaining,
        )
        if remaining:
            interruption.check_stop(job.stop, "before the search")
            job.setup_model_files()
            job.setup_data_sources()
            trials = Trials(
                environ,
                runtime,
                settings,
                task,
                search,
                job.prepare_data,
                job.model_dir,
                job.tokenizer,
                job.stop,
                job.threads.dataloader_workers,  # the job's CPU plan (setup_workspace)
            )
            for _ in range(remaining):
                if job.stop.is_set():
                    records.save(study)  # the finished trials must be durable before the exit
                interruption.check_stop(job.stop, "between trials")
                run_trial(study, trials, records)
    finally:
        job.cleanup()
    result = records.save(study, final=True)
    if result["best"]:
        print(
            reporting.format_metrics(
                {"best_trial": result["best"]["trial"], "best_objective": result["best"]["value"]}
            ),
            flush=True,
        )
    best = json.dumps(result["best"]["params"]) if result["best"] else "none (no trial completed)"
    log.info(
        "done in %.0f s: %d of %d trials; best %s; tune.json and optuna.db at %s",
        time.monotonic() - started,
        result["done"],
        search.trials,
        best,
        records.output.uri,
    )
    return result


def run_trial(study, trials: Trials, records: Records) -> None:
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
        log.warning(
            "stop requested (%s) in trial %d: recorded as failed, queued to run again on resume",
            trials.stop.reason,
            trial.number,
        )
        raise trials.stop.interrupted()
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

    def __init__(
        self, environ, runtime, settings, task, search: Plan, prepare, model_dir, tokenizer, stop, dataloader_workers=0
    ):
        self.environ, self.runtime, self.settings, self.task, self.search = environ, runtime, settings, task, search
        # settings -> the tokenized data and the task's info, from the prepared data at FT_CACHE_URI
        self.prepare, self.model_dir, self.tokenizer, self.stop = prepare, model_dir, tokenizer, stop
        self.per_trial_data = bool(RETOKENIZE & {p.name for p in search.space})
        self.dataloader_workers = dataloader_workers  # FT_DATALOADER_NUM_WORKERS' default, as for training
        self.data = None if self.per_trial_data else prepare(settings)

    def run(self, trial) -> Outcome:
        from entrypoint.config import settings as config
        from entrypoint.durability import interruption
        from entrypoint.job import adapters, training, workspace
        from entrypoint.job import callbacks as job_callbacks

        params = {p.name: p.suggest(trial) for p in self.search.space}
        log.info("trial %d: %s", trial.number, json.dumps(params))
        keep = bool(config.trainer_overrides(self.settings).get("load_best_model_at_end"))
        settings = config.load_settings(trial_environ(self.environ, params, keep), self.runtime, storage.read_file)
        work = workspace.prepare(settings.work_dir)  # fresh scratch folders for each trial
        data = self.prepare(settings) if self.per_trial_data else self.data
        task, info, train_ds, eval_ds = self.task, data.info, data.train, data.eval
        args = training.arguments_for(settings, task, work.checkpoints, self.dataloader_workers)
        model = adapters.apply(task.load_model(self.model_dir, settings.model, info, settings, args.seed), settings)
        stopper = interruption.StopOnRequest(self.stop)
        pruner = PruneOnEvaluation(trial, self.search.metric)
        callbacks = [
            stopper,
            SkipStopCheckpoint(stopper),
            job_callbacks.MetricLines(),
            pruner,
            *job_callbacks.extra_callbacks(settings),
        ]
        trainer = training.build_trainer(
            task, settings, info, args, model, self.tokenizer, train_ds, eval_ds, callbacks
        )
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
            raise UserError(
                f"FT_TUNE_METRIC: the evaluation returned no {self.search.metric}; it returned "
                f"{', '.join(sorted(metrics))}. Set FT_TUNE_METRIC to one of them."
            )
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
                log.info(
                    "trial %d pruned at step %d (%s=%.6g)",
                    self.trial.number,
                    state.global_step,
                    self.metric,
                    self.last_value,
                )
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
