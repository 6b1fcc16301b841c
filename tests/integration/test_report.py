"""report.html end to end: a `finetune train` stopped by SIGTERM and resumed writes the report next
to metrics.json, with both attempts and the interruption, and never a secret from its settings."""

import os
import re
import subprocess

import pytest

from tests.integration.conftest import settings
from tests.support import jobs

pytestmark = pytest.mark.integration

PLANTED = "hf_plantedReportSecret1234"


def report_settings(job_inputs, bucket, tmp_path):
    """A short stoppable run with evaluations on both sides of the stop, and a planted secret."""
    return dict(
        settings(job_inputs, bucket, "reported", tmp_path),
        **jobs.STOPPABLE,
        max_steps="60",
        eval_strategy="steps",
        eval_steps="20",
        hub_token=PLANTED,
    )


def attempt_rows(html: str) -> list[tuple[str, str]]:
    """(attempt, outcome) of each row of the attempts table."""
    return re.findall(r"<tr><td>(\d+)</td>.*?<span class=\"badge [a-z]+\">([a-z ()]+)</span>", html)


def test_the_report_lands_next_to_metrics_json_with_both_attempts_and_no_secret(aws_env, bucket, job_inputs, tmp_path):
    env = jobs.child_env(aws_env, **report_settings(job_inputs, bucket, tmp_path))
    job = jobs.Job(env, tmp_path)
    allowed = job.signal_between_steps("[metrics] step=30 ")
    assert job.finish() == 143, job.output()[-3000:]
    stopped = job.stop_step()
    assert stopped in allowed

    # written as the attempt stopped: the interruption is in it already
    keys = jobs.s3_keys(bucket, "runs/reported/")
    assert "runs/reported/report.html" in keys and "runs/reported/metrics.json" not in keys
    early = jobs.s3_bytes(bucket, "runs/reported/report.html").decode()
    assert attempt_rows(early) == [("1", "interrupted")]
    assert f'class="interruption" data-step="{stopped}"' in early
    assert PLANTED not in early

    rc, out = jobs.run(env, tmp_path)
    assert rc == 0, out[-3000:]
    keys = jobs.s3_keys(bucket, "runs/reported/")
    assert {"runs/reported/report.html", "runs/reported/metrics.json"} <= set(keys)
    # the final report goes into the model folder, published before metrics.json (which marks the output complete)
    assert out.rindex("report written to /") < out.index("model and metrics.json written to")
    html = jobs.s3_bytes(bucket, "runs/reported/report.html").decode()
    assert attempt_rows(html) == [("1", "interrupted"), ("2", "finished")]
    assert f'class="interruption" data-step="{stopped}"' in html
    assert f"attempt 2 resumed from step {stopped}" in html
    loss = re.search(r'data-chart="loss".*?<path class="series" data-series="loss" d="([^"]+)"', html).group(1)
    assert len(loss.split()) == 60  # a training line at every step, both attempts' on one curve
    assert 'data-series="eval_loss"' in html and 'data-series="eval_accuracy"' in html
    assert PLANTED not in html and "AWS_" not in html
    assert "FT_HUB_TOKEN" in html and job_inputs["train_data"] in html and job_inputs["model"] in html

    # `finetune report` rebuilds it from the run's location, e.g. while a run is in progress
    rebuilt = tmp_path / "rebuilt.html"
    done = subprocess.run(
        jobs.finetune_cmd("report", f"s3://{bucket}/runs/reported/", "--out", str(rebuilt)),
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "finished, 2 attempt(s), 1 interruption(s)" in done.stdout
    again = rebuilt.read_text()
    assert attempt_rows(again) == [("1", "interrupted"), ("2", "finished")] and PLANTED not in again
    assert os.path.getsize(rebuilt) > 10_000
