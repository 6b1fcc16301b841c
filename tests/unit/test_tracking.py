"""Tracking runs that survive restarts: which variables reopen a recorded run, and the record."""

import json
import os
from types import SimpleNamespace

import pytest

from entrypoint.io import storage
from entrypoint.job import tracking

MLFLOW, WANDB = tracking.TRACKERS["mlflow"], tracking.TRACKERS["wandb"]
SERVER = {"MLFLOW_TRACKING_URI": "http://mlflow:5000", "MLFLOW_EXPERIMENT_NAME": "sst2"}


def test_only_mlflow_and_wandb_are_tracked():
    assert tracking.active(["tensorboard", "mlflow", "wandb"]) == [MLFLOW, WANDB]
    assert tracking.active(None) == []


def test_a_recorded_mlflow_run_is_reopened_through_mlflow_run_id():
    records = {"mlflow": {"run_id": "abc", "destination": SERVER}}
    assert tracking.resume_plan([MLFLOW], records, SERVER) == {"MLFLOW_RUN_ID": "abc"}


def test_a_recorded_wandb_run_is_resumed_with_allow():
    records = {"wandb": {"run_id": "r1", "destination": {"WANDB_PROJECT": "p"}}}
    plan = tracking.resume_plan([WANDB], records, {"WANDB_PROJECT": "p", "WANDB_MODE": "offline"})
    assert plan == {"WANDB_RUN_ID": "r1", "WANDB_RESUME": "allow"}


@pytest.mark.parametrize(
    "records, environ",
    [
        ({}, SERVER),  # the first attempt: nothing recorded yet
        ({"mlflow": {"run_id": "abc", "destination": SERVER}}, {**SERVER, "MLFLOW_RUN_ID": "mine"}),  # user's own
        ({"mlflow": {"run_id": "abc", "destination": SERVER}}, {**SERVER, "MLFLOW_TRACKING_URI": "http://other"}),
        ({"mlflow": {"run_id": "abc", "destination": {}}}, SERVER),  # recorded for the default destination
    ],
)
def test_no_run_is_reopened_without_a_record_for_this_destination(records, environ):
    assert tracking.resume_plan([MLFLOW], records, environ) == {}


def state(main=True):
    return SimpleNamespace(is_world_process_zero=main)


def test_the_first_attempt_records_its_run_and_the_next_one_resumes_it(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_RUN_ID", "")  # restored (unset) after the test: resume_runs sets it
    monkeypatch.delenv("MLFLOW_RUN_ID")
    store = storage.open_store(str(tmp_path))
    recorder = tracking.RecordRuns(store, ["mlflow"], {}, SERVER, run_id_of=lambda t: "run-1")
    recorder.on_train_begin(None, state(), None)
    assert json.loads((tmp_path / "_tracking" / "mlflow.json").read_text()) == {
        "run_id": "run-1",
        "destination": SERVER,
    }

    records = tracking.resume_runs(store, ["mlflow"], SERVER)  # the next attempt, before its Trainer
    assert os.environ["MLFLOW_RUN_ID"] == "run-1"
    assert records == {"mlflow": {"run_id": "run-1", "destination": SERVER}}


def test_a_racing_attempt_does_not_replace_the_first_record(tmp_path):
    store = storage.open_store(str(tmp_path))
    for run_id in ("first", "second"):  # both started before either record existed
        tracking.RecordRuns(store, ["wandb"], {}, {}, run_id_of=lambda t, r=run_id: r).on_train_begin(
            None, state(), None
        )
    assert json.loads(store.read_bytes(WANDB.key))["run_id"] == "first"


def test_a_record_for_another_destination_is_replaced(tmp_path):
    store = storage.open_store(str(tmp_path))
    store.write_bytes(MLFLOW.key, json.dumps({"run_id": "old", "destination": {}}).encode())
    records = {"mlflow": tracking.read_record(store, MLFLOW)}
    tracking.RecordRuns(store, ["mlflow"], records, SERVER, run_id_of=lambda t: "new").on_train_begin(
        None, state(), None
    )
    assert json.loads(store.read_bytes(MLFLOW.key)) == {"run_id": "new", "destination": SERVER}


def test_other_processes_record_nothing(tmp_path):
    store = storage.open_store(str(tmp_path))
    tracking.RecordRuns(store, ["mlflow"], {}, SERVER, run_id_of=lambda t: "x").on_train_begin(None, state(False), None)
    assert store.list() == {}


def test_after_training_the_mlflow_run_is_named_for_the_evaluation_that_follows(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_RUN_ID", "")  # restored (unset) after the test
    monkeypatch.delenv("MLFLOW_RUN_ID")
    recorder = tracking.RecordRuns(storage.open_store(str(tmp_path)), ["mlflow"], {}, SERVER, run_id_of=lambda t: "r")
    recorder.on_train_begin(None, state(), None)
    assert "MLFLOW_RUN_ID" not in os.environ  # nothing is set before training ends
    recorder.on_train_end(None, state(), None)
    assert os.environ["MLFLOW_RUN_ID"] == "r"


def test_credentials_in_the_tracking_uri_are_not_recorded(tmp_path):
    store = storage.open_store(str(tmp_path))
    environ = {"MLFLOW_TRACKING_URI": "https://alice:s3cr3t-passw0rd@mlflow.example.com"}
    tracking.RecordRuns(store, ["mlflow"], {}, environ, run_id_of=lambda t: "r").on_train_begin(None, state(), None)
    raw = store.read_bytes(MLFLOW.key).decode()
    assert "s3cr3t-passw0rd" not in raw and "mlflow.example.com" in raw
    records = {"mlflow": json.loads(raw)}
    assert tracking.resume_plan([MLFLOW], records, environ) == {"MLFLOW_RUN_ID": "r"}  # still the same destination
