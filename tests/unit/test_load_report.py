"""transformers' per-load table becomes the job's one line: which weights are new."""

import logging

from transformers import AutoModelForSequenceClassification

from entrypoint.job import modeling
from tests.support import tiny

REPORT = """BertForSequenceClassification LOAD REPORT from: /models/tiny
Key               | Status  |
------------------+---------+-
classifier.bias   | MISSING |
classifier.weight | MISSING |
cls.predictions.bias | UNEXPECTED |

Notes:
- MISSING:\tthose params were newly initialized because missing from the checkpoint."""


def test_the_table_becomes_one_line_naming_the_new_weights():
    assert modeling.load_report_line(REPORT, "s3://b/m/") == (
        "loaded BertForSequenceClassification from s3://b/m/; newly initialised (trained from scratch): "
        "classifier.bias, classifier.weight; not used: cls.predictions.bias"
    )


def test_loading_a_model_with_a_new_head_logs_one_line_and_no_table(tmp_path, capfd, caplog):
    folder = tiny.build_tiny_bert(tmp_path / "model", ["a good film", "a bad film", "the best", "the worst"] * 5)
    with caplog.at_level(logging.INFO, logger="entrypoint.job.modeling"), modeling.one_line_load_report("m"):
        AutoModelForSequenceClassification.from_pretrained(str(folder), num_labels=2)
    err = capfd.readouterr().err
    assert "LOAD REPORT" not in err and "| MISSING" not in err
    lines = [r.getMessage() for r in caplog.records if r.name == "entrypoint.job.modeling"]
    [line] = lines
    assert line.startswith("loaded BertForSequenceClassification from m; newly initialised") and "classifier" in line
