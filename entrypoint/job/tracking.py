"""Experiment tracking that survives restarts: every attempt of a job logs to one MLflow or Weights &
Biases run (transformers issue #25032: a resumed Trainer otherwise starts a new run each time).

transformers' own callbacks (FT_REPORT_TO=mlflow / wandb) do the logging. This module only keeps
the run's id at the checkpoint location, next to the checkpoints it belongs to:

- the attempt that starts the run records its id (`_tracking/mlflow.json`, `_tracking/wandb.json`)
  right after the integration's `on_train_begin` has started it (`RecordRuns`);
- every later attempt sets the integration's resume variables before the Trainer is built
  (`resume_runs`): MLFLOW_RUN_ID for MLflow (`mlflow.start_run` reopens that run); WANDB_RUN_ID with
  WANDB_RESUME=allow for wandb (`wandb.init` continues it).

World rank 0 alone: the integrations log from it only. A variable the user set wins over the record,
and a record made for another tracking destination (MLFLOW_TRACKING_URI and experiment, or the wandb
project and entity) is not resumed: that attempt starts a new run and records it instead.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping

from transformers import TrainerCallback

from entrypoint.config import sensitive
from entrypoint.io import storage

log = logging.getLogger(__name__)

TRACKING = "_tracking/"


@dataclasses.dataclass(frozen=True)
class Tracker:
    """One integration: its FT_REPORT_TO name, the variables that say where its runs go, and the
    variables that make it reopen a run."""

    name: str
    destination_variables: tuple[str, ...]  # where runs go; a record made elsewhere is not resumed
    run_id_variable: str
    extra_resume_variables: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> str:
        return f"{TRACKING}{self.name}.json"

    def destination(self, environ: Mapping[str, str]) -> dict[str, str]:
        """Where this attempt's runs go, as recorded: a `user:password@` in a URI is left out."""
        return {name: sensitive.scrub(environ[name]) for name in self.destination_variables if environ.get(name)}

    def resume_variables(self, run_id: str) -> dict[str, str]:
        return {self.run_id_variable: run_id, **dict(self.extra_resume_variables)}


TRACKERS = {
    "mlflow": Tracker("mlflow", ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"), "MLFLOW_RUN_ID"),
    "wandb": Tracker(
        "wandb", ("WANDB_ENTITY", "WANDB_PROJECT"), "WANDB_RUN_ID", extra_resume_variables=(("WANDB_RESUME", "allow"),)
    ),
}


def active(report_to: Iterable[str] | None) -> list[Tracker]:
    """The trackers among the Trainer's integrations (TrainingArguments.report_to, normalised)."""
    return [TRACKERS[name] for name in (report_to or []) if name in TRACKERS]


def resume_plan(
    trackers: Iterable[Tracker], records: Mapping[str, dict | None], environ: Mapping[str, str]
) -> dict[str, str]:
    """The variables that make each tracker reopen its recorded run (pure); none for a tracker
    without a record, whose run the user names already, or whose record was made for another
    destination."""
    plan: dict[str, str] = {}
    for tracker in trackers:
        record = records.get(tracker.name)
        if not record or not record.get("run_id") or environ.get(tracker.run_id_variable):
            continue
        if record.get("destination", {}) != tracker.destination(environ):
            log.warning(
                "%s: the run recorded at %s went to %s, this attempt logs to %s: starting a new run",
                tracker.name,
                tracker.key,
                record.get("destination") or "the default destination",
                tracker.destination(environ) or "the default destination",
            )
            continue
        plan.update(tracker.resume_variables(str(record["run_id"])))
    return plan


def read_record(store: storage.Store, tracker: Tracker) -> dict | None:
    raw = store.read_bytes(tracker.key)
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        log.warning("%s at %s is unreadable: a new %s run is started", tracker.key, store.uri, tracker.name)
        return None


def resume_runs(store: storage.Store, report_to: Iterable[str] | None, environ: Mapping[str, str]) -> dict[str, dict]:
    """On the main process, before the Trainer is built: point the trackers at the runs recorded
    by earlier attempts (sets the variables in os.environ, where the integrations read them).
    Returns the records found, by tracker name."""
    trackers = active(report_to)
    records = {t.name: read_record(store, t) for t in trackers}
    plan = resume_plan(trackers, records, environ)
    for tracker in trackers:
        if tracker.run_id_variable in plan:
            log.info("%s: continuing run %s recorded at %s", tracker.name, plan[tracker.run_id_variable], tracker.key)
    os.environ.update(plan)  # transformers' callbacks and the libraries read the process environment
    return {name: record for name, record in records.items() if record}


def current_run_id(tracker: Tracker) -> str | None:
    """The id of the run the integration has started in this process, if any."""
    if tracker.name == "mlflow":
        import mlflow

        run = mlflow.active_run()
        return run.info.run_id if run else None
    import wandb

    return wandb.run.id if wandb.run else None


class RecordRuns(TrainerCallback):
    """Records the id of each tracker's run at the checkpoint location once the integration has
    started it (this callback goes after the Trainer's integration callbacks), unless the record
    already names it."""

    def __init__(
        self,
        store: storage.Store,
        report_to: Iterable[str] | None,
        records: Mapping[str, dict],
        environ: Mapping[str, str],
        run_id_of: Callable[[Tracker], str | None] = current_run_id,
    ):
        self.store = store
        self.trackers = active(report_to)
        self.records = dict(records)
        self.environ = environ
        self.run_id_of = run_id_of
        self.run_ids: dict[str, str] = {}  # tracker name -> this attempt's run

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return control
        for tracker in self.trackers:
            run_id = self.run_id_of(tracker)
            if run_id is not None:
                self.run_ids[tracker.name] = run_id
            record = self.records.get(tracker.name) or {}
            destination = tracker.destination(self.environ)
            if run_id is None or (record.get("run_id") == run_id and record.get("destination", {}) == destination):
                continue
            payload = {"run_id": run_id, "destination": destination}
            # Create-if-absent for the first record (two attempts racing keep the first); a record
            # made for another destination is replaced.
            written = self.store.write_bytes(tracker.key, json.dumps(payload).encode(), if_absent=not record)
            if written:
                self.records[tracker.name] = payload
                log.info("%s: run %s recorded at %s%s", tracker.name, run_id, self.store.uri, tracker.key)
        return control

    def on_train_end(self, args, state, control, **kwargs):
        # MLflowCallback ends its run when training ends; the evaluation that follows would then log
        # into a new run (mlflow.log_metrics starts one when none is active). Named in MLFLOW_RUN_ID,
        # the run is reopened instead, and mlflow ends it when the process exits.
        if state.is_world_process_zero and "mlflow" in self.run_ids:
            os.environ[TRACKERS["mlflow"].run_id_variable] = self.run_ids["mlflow"]
        return control
