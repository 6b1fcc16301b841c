"""How many processes tokenize, and the progress lines of a long preparation (the CPU budget: test_cpus.py)."""

import logging
import time

import datasets
import pytest

from entrypoint.job import preprocess


@pytest.mark.parametrize(
    ("rows", "requested", "cpus", "workers"),
    [
        (1_000, None, 8, 1),  # small: one process
        (preprocess.ROWS_PER_WORKER * 2, None, 8, 2),
        (1_000_000, None, 8, 8),
        (1_000_000, None, 2, 2),
        (1_000, 4, 2, 4),  # FT_PREPROCESSING_NUM_WORKERS wins
        (3, 4, 2, 3),  # but never more than rows
    ],
)
def test_workers(rows, requested, cpus, workers):
    assert preprocess.workers(rows, requested, cpus) == workers


class Settings:
    preprocessing_num_workers = 2


def test_tokenizing_in_two_processes_gives_the_same_rows():
    ds = datasets.Dataset.from_dict({"text": [f"row {i}" for i in range(50)]})
    assert preprocess.map_options(ds, Settings()) == {"num_proc": 2}

    def encode(batch):
        return {"ids": [[len(t), int(t.split()[1])] for t in batch["text"]]}

    one = ds.map(encode, batched=True, batch_size=7)
    two = ds.map(encode, batched=True, batch_size=7, **preprocess.map_options(ds, Settings()))
    assert one["ids"] == two["ids"] and two["ids"][49] == [6, 49]


def test_a_long_preparation_logs_progress_lines(caplog):
    with (
        caplog.at_level(logging.INFO, logger=preprocess.log.name),
        preprocess.progress("tokenize FT_TRAIN_DATA", 123, interval_s=0.05),
    ):
        time.sleep(0.18)
    lines = [r.getMessage() for r in caplog.records]
    assert sum("tokenize FT_TRAIN_DATA: 123 rows, still running after" in line for line in lines) >= 2
    assert lines[-1].startswith("tokenize FT_TRAIN_DATA: 123 rows in ")
