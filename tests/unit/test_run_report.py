"""The job's side of report.html: its attempt record is redacted before it is stored, a newer
durable checkpoint brings a new report, and a report that cannot be written never fails the job."""

import json
import logging
import types

from entrypoint.config.settings import settings_class
from entrypoint.io.storage import LocalStore
from entrypoint.job import run_report
from entrypoint.ops import report

PLANTED = "hf_plantedJobSecret99"


def job_settings(output_uri: str):
    return settings_class()(
        model="s3://models/tiny/", train_data="s3://data/train.csv", output_uri=output_uri, hub_token=PLANTED
    )


def fake_sync(durable_step=None):
    """What RunReport reads of the checkpoint sync: the newest durable step."""
    return types.SimpleNamespace(stats=types.SimpleNamespace(durable_step=durable_step))


def test_the_attempt_record_holds_the_settings_without_the_secret(tmp_path):
    store = LocalStore(str(tmp_path / "ck"))
    run_report.RunReport(store, job_settings(str(tmp_path / "out")), 2, 30, fake_sync()).record_attempt()
    stored = (tmp_path / "ck" / "_report" / "000002.json").read_text()
    record = json.loads(stored)
    assert record["attempt"] == 2 and record["resumed_from_step"] == 30
    assert record["settings"]["FT_MODEL"] == "s3://models/tiny/" and record["settings"]["FT_HUB_TOKEN"] == "(redacted)"
    assert PLANTED not in stored


def test_a_newer_durable_checkpoint_brings_a_new_report(tmp_path):
    store, out = LocalStore(str(tmp_path / "ck")), tmp_path / "out" / report.REPORT_FILE
    sync = fake_sync()
    job = run_report.RunReport(store, job_settings(str(tmp_path / "out")), 1, None, sync)
    job.on_step_end(None, None, None)
    job.wait()
    assert not out.exists()  # nothing durable yet
    sync.stats.durable_step = 25
    job.on_step_end(None, None, None)
    job.wait()
    assert out.exists()
    out.unlink()
    job.on_step_end(None, None, None)  # the same durable step: nothing new to show
    job.wait()
    assert not out.exists()


def test_only_the_uploading_process_writes(tmp_path):
    job = run_report.RunReport(LocalStore(str(tmp_path / "ck")), job_settings(str(tmp_path / "out")), 1, None, None)
    job.record_attempt()
    job.publish()
    assert not (tmp_path / "ck").exists() and not (tmp_path / "out").exists()


def test_a_report_that_cannot_be_written_is_a_warning_not_a_failure(tmp_path, caplog):
    (tmp_path / "file").write_text("in the way")
    blocked = str(tmp_path / "file" / "out")  # a folder inside a file: every write fails
    job = run_report.RunReport(LocalStore(blocked + "-ck"), job_settings(blocked), 1, None, fake_sync(25))
    with caplog.at_level(logging.WARNING):
        job.on_step_end(None, None, None)  # in the background, at a durable checkpoint
        job.wait()
        job.publish()  # at the end: returns, no exception
    assert "could not write report.html" in caplog.text
    job = run_report.RunReport(LocalStore(blocked), job_settings(str(tmp_path / "out")), 1, None, fake_sync())
    with caplog.at_level(logging.WARNING):
        job.record_attempt()
    assert "could not record this attempt" in caplog.text
