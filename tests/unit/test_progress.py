"""Transfer progress: a bar on a terminal, a line per period in a log, never a line per file."""

import io
import logging

from entrypoint.io.progress import Progress
from entrypoint.io.storage import LocalStore, download_many, upload_many


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_a_log_gets_one_line_per_period_and_one_at_the_end(caplog):
    clock = Clock()
    told = Progress("downloading s3://b/model/", 100_000_000, every_s=30, stream=io.StringIO(), clock=clock)
    with caplog.at_level(logging.INFO, logger="finetune"):
        for _ in range(10):  # ten files in 50 s: two periods passed, not ten lines
            clock.now += 5
            told.add(10_000_000)
        told.finish()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "downloading s3://b/model/: 60.0 of 100.0 MB (60%), 2.0 MB/s",
        "downloading s3://b/model/: 100.0 of 100.0 MB (100%), 2.0 MB/s (done)",
    ]


def test_a_short_transfer_logs_nothing(caplog):
    clock = Clock()
    told = Progress("uploading", 10, every_s=30, stream=io.StringIO(), clock=clock)
    with caplog.at_level(logging.INFO, logger="finetune"):
        told.add(10)
        told.finish()
    assert caplog.records == []


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_terminal_gets_a_bar_redrawn_in_place(caplog):
    screen, clock = Terminal(), Clock()
    told = Progress("uploading", 4, stream=screen, clock=clock)
    with caplog.at_level(logging.INFO, logger="finetune"):
        for _ in range(4):
            clock.now += 1
            told.add(1)
        told.finish()
    drawn = screen.getvalue()
    assert drawn.count("\r[") == 4 and drawn.endswith("\n") and "[" + "#" * 30 + "]" in drawn
    assert caplog.records == []  # the bar replaces the log lines


def test_transfers_of_many_files_tell_their_progress(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr("entrypoint.io.progress.EVERY_S", 0.0)  # every file passes a period
    files = {}
    for n in range(3):
        (tmp_path / f"f{n}").write_bytes(b"x" * 1000)
        files[f"up/f{n}"] = tmp_path / f"f{n}"
    store = LocalStore(str(tmp_path / "store"))
    with caplog.at_level(logging.INFO, logger="finetune"):
        upload_many(store, files, concurrency=1)
        download_many(
            store, list(files), tmp_path / "down", strip="up/", concurrency=1, sizes=dict.fromkeys(files, 1000)
        )
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("uploading to") and "(100%)" in line for line in lines), lines
    assert any(line.startswith("downloading") and "(100%)" in line for line in lines), lines
    assert sorted(p.name for p in (tmp_path / "down").iterdir()) == ["f0", "f1", "f2"]
