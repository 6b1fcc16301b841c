"""report.html: the page is a pure function of what the job wrote (curves across attempts, the
interruptions marked, secrets redacted); `finetune report` reads a run from a real S3 endpoint."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from entrypoint.durability import attempts, checkpoints
from entrypoint.durability.checkpoints import UploadRequest
from entrypoint.durability.manifests import Checkpoint
from entrypoint.io.storage import S3Store
from entrypoint.ops import charts, report, report_html, status

REPO = Path(__file__).resolve().parents[2]
PLANTED = "hf_plantedSecretValue42"


def checkpoint(step: int, generation: int) -> Checkpoint:
    manifest = {"format": 1, "created_unix": 1000.0 + step, "files": {"model.safetensors": {"size": 10}}}
    return Checkpoint(f"checkpoint-{step:09d}-g{generation:04d}", step, generation, {"model.safetensors": 10}, manifest)


def history(last_step: int) -> list[dict]:
    """A Trainer log history: a training line every 5 steps, an evaluation every 20."""
    out: list[dict] = []
    for step in range(5, last_step + 1, 5):
        out.append({"step": step, "epoch": step / 40, "loss": 1.0 / step, "learning_rate": 5e-5 * (1 - step / 80)})
        if step % 20 == 0:
            out.append({"step": step, "eval_loss": 0.9 - step / 100, "eval_accuracy": 0.5 + step / 200,
                        "eval_runtime": 0.2, "eval_samples_per_second": 400.0})  # fmt: skip
    return out


SETTINGS = {
    "FT_MODEL": "s3://models/tiny/",
    "FT_TRAIN_DATA": "s3://data/train.csv",
    "FT_EVAL_DATA": "s3://data/eval.csv",
    "FT_TASK": "sequence-classification",
    "FT_LEARNING_RATE": 5e-5,
}


def interrupted_then_finished(**overrides) -> tuple[status.RunFiles, dict]:
    """Attempt 1 interrupted at step 30 (SIGTERM), attempt 2 resumed from there and finished at 80."""
    log = history(80) + [{"step": 80, "train_runtime": 8.0, "train_steps_per_second": 10.0,
                          "train_samples_per_second": 40.0, "train_loss": 0.2}]  # fmt: skip
    values = dict(
        checkpoint_uri="s3://b/run/checkpoints/",
        output_uri="s3://b/run/",
        claims={
            1: {"label": "local pid 1", "started_unix": 1000.0},
            2: {"label": "local pid 2", "started_unix": 2000.0},
        },
        endings={1: {"outcome": "interrupted", "steps_lost": 0, "notice_to_durable_s": 0.85}},
        checkpoints=[checkpoint(80, 2), checkpoint(30, 1)],
        trainer_state={"global_step": 80, "max_steps": 80, "log_history": log},
        metrics={"global_step": 80, "eval_accuracy": 0.9, "resumed_from_step": 30},
    )
    values.update(overrides)
    records = {
        1: report.attempt_record(1, None, SETTINGS, 1000.0),
        2: report.attempt_record(2, 30, SETTINGS, 2000.0),
    }
    return status.RunFiles(**values), records


def page(run: status.RunFiles, records: dict) -> str:
    return report_html.render(report.build(run, records, now_unix=3000.0))


def path_points(html: str, series: str, chart: str) -> list[tuple[float, float]]:
    svg = re.search(rf'<svg class="chart" data-chart="{chart}".*?</svg>', html).group(0)
    d = re.search(rf'<path class="series" data-series="{series}" d="([^"]+)"', svg).group(1)
    return [tuple(map(float, p[1:].split(","))) for p in d.split()]


def test_the_curves_run_across_both_attempts_with_the_interruption_marked():
    run, records = interrupted_then_finished()
    data = report.build(run, records, now_unix=3000.0)
    assert [(a["attempt"], a["from_step"], a["to_step"], a["outcome"]) for a in data["attempts"]] == [
        (1, 0, 30, "interrupted"),
        (2, 30, 80, "finished"),
    ]
    assert [(i["attempt"], i["step"], i["resumed_by"]) for i in data["interruptions"]] == [(1, 30, 2)]
    assert [s for s, _ in data["curves"]["loss"]] == list(range(5, 81, 5))  # both attempts' steps, one line
    assert [s for s, _ in data["curves"]["eval_accuracy"]] == [20, 40, 60, 80]

    html = page(run, records)
    loss = path_points(html, "loss", "loss")
    assert len(loss) == 16 and loss == sorted(loss)  # one line, left to right, across the interruption
    assert len(path_points(html, "eval_loss", "loss")) == 4
    assert len(path_points(html, "eval_accuracy", "eval_accuracy")) == 4
    assert len(path_points(html, "learning_rate", "learning_rate")) == 16
    marker = re.findall(r'<g class="interruption" data-step="(\d+)"><title>([^<]+)</title>', html)
    assert marker and {step for step, _ in marker} == {"30"}
    assert "attempt 1 interrupted at step 30; attempt 2 resumed from step 30" in marker[0][1]
    assert "0.85 s from notice to durable" in marker[0][1]
    assert re.findall(r'class="attempt-band" data-attempt="(\d)"', html)[:2] == ["1", "2"]
    # the marker sits at the first attempt's last point (step 30), before the second's first (35)
    x_marker = float(re.search(r'<g class="interruption"[^>]*>.*?<line x1="([\d.]+)"', html).group(1))
    assert loss[5][0] == x_marker < loss[6][0]
    assert "10 steps/s" in html and "40 samples/s" in html  # throughput, as the Trainer reported it
    assert "s3://models/tiny/" in html and "s3://data/train.csv" in html and "s3://data/eval.csv" in html


def test_a_planted_secret_never_reaches_the_page():
    settings = dict(
        SETTINGS,
        FT_HUB_TOKEN=PLANTED,
        FT_HUB_MODEL_ID=f"org/model-{PLANTED}",  # the value again, under an innocent name
        AWS_SECRET_ACCESS_KEY="aws-secret-planted",
        FT_TRAIN_DATA="https://user:hunter2pass@data.example/train.csv",
        FT_WANDB_API_KEY="wandb-key-planted",
    )
    run, records = interrupted_then_finished()
    records[2] = dict(records[2], settings=settings)  # unredacted, as if written by something else
    html = page(run, records)
    for secret in (PLANTED, "aws-secret-planted", "hunter2pass", "wandb-key-planted", "AWS_SECRET_ACCESS_KEY"):
        assert secret not in html, secret
    assert re.search(r"FT_HUB_TOKEN</code></td><td><span class=\"redacted\">\(redacted\)", html)
    assert "https://(redacted)@data.example/train.csv" in html
    # and the record the job writes is redacted before it is stored
    stored = json.dumps(report.attempt_record(2, 30, settings, 0.0))
    assert PLANTED not in stored and "AWS_SECRET_ACCESS_KEY" not in stored and "hunter2pass" not in stored


def test_a_report_written_as_the_attempt_stops_marks_where_it_stopped():
    run, records = interrupted_then_finished(
        claims={1: {"started_unix": 1000.0}},
        checkpoints=[checkpoint(30, 1)],
        trainer_state={"global_step": 30, "max_steps": 80, "log_history": history(30)},
        metrics=None,
    )
    data = report.build(run, {1: records[1]}, now_unix=3000.0)
    assert data["summary"]["state"] == "in progress"
    assert [(i["attempt"], i["step"], i["resumed_by"]) for i in data["interruptions"]] == [(1, 30, None)]
    assert 'class="interruption" data-step="30"' in report_html.render(data)


def test_a_killed_attempt_is_marked_where_the_next_one_resumed():
    run, records = interrupted_then_finished(
        claims={1: {}, 2: {}, 3: {}},
        endings={},
        checkpoints=[checkpoint(80, 3), checkpoint(50, 2), checkpoint(30, 1)],
    )
    records = {
        1: records[1],
        2: report.attempt_record(2, 30, SETTINGS, 0),
        3: report.attempt_record(3, 50, SETTINGS, 0),
    }
    data = report.build(run, records, now_unix=3000.0)
    assert [(i["step"], i["outcome"]) for i in data["interruptions"]] == [
        (30, "killed (no ending recorded)"),
        (50, "killed (no ending recorded)"),
    ]
    assert [(a["from_step"], a["to_step"]) for a in data["attempts"]] == [(0, 30), (30, 50), (50, 80)]


def test_an_uninterrupted_run_has_no_marker_and_an_empty_run_still_renders():
    run, records = interrupted_then_finished(claims={1: {}}, endings={}, checkpoints=[checkpoint(80, 1)])
    html = page(run, {1: records[1]})
    assert 'class="interruption"' not in html and 'data-series="loss"' in html
    empty = status.RunFiles("s3://b/r/checkpoints/", "s3://b/r/", {}, {}, [], None, None)
    html = page(empty, {})
    assert "not started" in html and "Nothing logged yet" in html and "Not recorded" in html


def test_the_page_needs_no_network_and_escapes_what_it_shows():
    run, records = interrupted_then_finished(output_uri="s3://b/<script>alert(1)</script>/")
    html = page(run, records)
    assert "<script" not in html and "&lt;script&gt;" in html
    assert "default-src 'none'" in html  # the browser refuses any request the page might make
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)


def test_nice_ticks_and_a_flat_or_empty_chart():
    assert charts.nice_ticks(0.13, 0.91) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert charts.nice_ticks(0, 240, 6) == [0, 50, 100, 150, 200, 250]
    assert 'data-series="x"' in charts.line_chart("flat", [charts.Series("x", [(1, 0.5), (2, 0.5)])])
    assert "no data yet" in charts.line_chart("none", [charts.Series("x", [(1, float("nan"))])])
    long = [(i, float(i % 7)) for i in range(10_000)]
    assert len(charts.thin(long)) <= charts.MAX_POINTS and max(y for _, y in charts.thin(long)) == 6


def finetune_report(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "entrypoint", "report", *args], capture_output=True, text=True, env=env, cwd=REPO,
        timeout=120,
    )  # fmt: skip


def test_finetune_report_reads_the_run_from_s3(aws_env, bucket, tmp_path):
    """The layout the job writes (claims, an interrupted ending, checkpoints with trainer_state.json,
    the attempt records), made by the job's own code at the moto server, read by the command."""
    import os

    store = S3Store(f"s3://{bucket}/run/checkpoints/")
    for generation, (resumed, steps) in enumerate([(None, (20, 30)), (30, (60,))], start=1):
        assert attempts.claim_generation(store, f"local pid {generation}") == generation
        report.write_record(store, report.attempt_record(generation, resumed, dict(SETTINGS, FT_HUB_TOKEN=PLANTED), 0))
        for step in steps:
            folder = tmp_path / f"checkpoint-{step}"
            folder.mkdir()
            (folder / "trainer_state.json").write_text(
                json.dumps({"global_step": step, "max_steps": 80, "log_history": history(step)})
            )
            checkpoints.upload_checkpoint(store, UploadRequest(store.uri, 2, folder, step, generation, 5, None), {})
        if generation == 1:
            attempts.record_attempt_end(store, 1, "interrupted", {"steps_lost": 0, "notice_to_durable_s": 1.5})
    out = tmp_path / "look" / "report.html"
    done = finetune_report(f"s3://{bucket}/run/", "--out", str(out), env={**os.environ, **aws_env})
    assert done.returncode == 0, done.stderr
    assert "in progress, 2 attempt(s), 1 interruption(s)" in done.stdout
    html = out.read_text()
    assert 'class="interruption" data-step="30"' in html and 'data-series="eval_accuracy"' in html
    assert PLANTED not in html and "60 / 80" in html


@pytest.mark.slow
def test_the_report_renders_in_a_real_browser_offline(tmp_path):
    """Chromium (Debian's, driven by Playwright) opens the file with the network off: it renders,
    the loss and evaluation curves are drawn, the interruption is marked (only where there was
    one), and the page logs no error and makes no request."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (make test-slow does)")
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("no chromium: apt-get install -y chromium (make test-slow does)")
    run, records = interrupted_then_finished()
    interrupted = tmp_path / "interrupted.html"
    interrupted.write_text(page(run, records))
    plain = tmp_path / "straight.html"
    plain.write_text(page(*interrupted_then_finished(claims={1: {}}, endings={}, checkpoints=[checkpoint(80, 1)])))

    requests, problems = [], []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium)
        try:
            context = browser.new_context(offline=True, viewport={"width": 1280, "height": 900})
            context.route(
                "**/*", lambda route: route.continue_() if route.request.url.startswith("file:") else route.abort()
            )
            tab = context.new_page()
            tab.on("request", lambda r: requests.append(r.url))
            tab.on(
                "console",
                lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None,
            )
            tab.on("pageerror", lambda e: problems.append(f"page error: {e}"))

            tab.goto(interrupted.as_uri())
            assert tab.title().startswith("finetune report: s3://b/run/")
            assert tab.locator("h1").inner_text() == "s3://b/run/"
            for series, chart in (("loss", "loss"), ("eval_loss", "loss"), ("eval_accuracy", "eval_accuracy")):
                path = tab.locator(f'svg.chart[data-chart="{chart}"] path.series[data-series="{series}"]')
                assert path.count() == 1, series
                assert path.evaluate("p => p.getTotalLength()") > 100, series  # drawn, not a dot
            charts_box = tab.locator('svg.chart[data-chart="loss"]').bounding_box()
            assert charts_box["width"] > 300 and charts_box["height"] > 100
            marker = tab.locator('svg.chart[data-chart="loss"] g.interruption[data-step="30"]')
            assert marker.count() == 1 and marker.is_visible()
            assert "attempt 1 interrupted at step 30" in marker.locator("title").text_content()
            assert tab.locator("table").first.inner_text().count("interrupted") == 1
            tab.screenshot(path=str(tmp_path / "report.png"), full_page=True)

            tab.goto(plain.as_uri())
            assert tab.locator('path.series[data-series="loss"]').count() == 1
            assert tab.locator("g.interruption").count() == 0
        finally:
            browser.close()
    assert not problems, problems
    assert set(requests) == {interrupted.as_uri(), plain.as_uri()}, requests  # the files themselves, nothing else
    assert (tmp_path / "report.png").stat().st_size > 50_000
