import json

import pytest

from entrypoint.config.platform import Runtime
from entrypoint.config.settings import load_settings
from entrypoint.errors import UserError
from entrypoint.job import data
from entrypoint.tasks import classification


def load(s, tmp_path):
    """What the job does for sequence-classification: load, check columns, map labels."""
    return classification.prepare(data.load_splits(s, tmp_path / "work", classification.columns(s)), s)


def settings_for(tmp_path, **extra):
    env = {"FT_MODEL": "m", "FT_WORK_DIR": str(tmp_path / "work"), **{f"FT_{k.upper()}": v for k, v in extra.items()}}
    return load_settings(env, Runtime("local"))


def test_string_labels_are_mapped_sorted_and_eval_uses_the_same_ids(tmp_path):
    (tmp_path / "t.csv").write_text("text,label\na,pos\nb,neg\nc,pos\n")
    (tmp_path / "e.jsonl").write_text(
        "\n".join(json.dumps({"text": t, "label": label}) for t, label in [("d", "neg"), ("e", "pos")])
    )
    s = settings_for(tmp_path, train_data=str(tmp_path / "t.csv"), eval_data=str(tmp_path / "e.jsonl"))
    splits = load(s, tmp_path)
    assert splits.info["id2label"] == {0: "neg", 1: "pos"}
    assert splits.train["labels"] == [1, 0, 1] and splits.eval["labels"] == [0, 1]


def test_a_folder_of_parquet_files_and_integer_labels(tmp_path):
    import pandas as pd

    (tmp_path / "d").mkdir()
    pd.DataFrame({"sentence": ["a", "b"], "y": [0, 2]}).to_parquet(tmp_path / "d" / "p1.parquet")
    pd.DataFrame({"sentence": ["c"], "y": [1]}).to_parquet(tmp_path / "d" / "p2.parquet")
    s = settings_for(
        tmp_path, train_data=str(tmp_path / "d"), text_column="sentence", label_column="y", validation_split="0.34"
    )
    splits = load(s, tmp_path)
    assert splits.info["id2label"] == {0: "0", 1: "1", 2: "2"}
    assert len(splits.train) + len(splits.eval) == 3 and len(splits.eval) >= 1


def test_training_labels_of_one_value_only_are_an_error(tmp_path):
    (tmp_path / "t.csv").write_text("text,label\na,x\nb,x\n")
    s = settings_for(tmp_path, train_data=str(tmp_path / "t.csv"))
    with pytest.raises(UserError, match="every row has the same label .'x'"):
        load(s, tmp_path)


def test_a_text_column_of_lists_is_an_error(tmp_path):
    (tmp_path / "t.jsonl").write_text('{"text": ["a", "b"], "label": 0}\n{"text": ["c"], "label": 1}\n')
    s = settings_for(tmp_path, train_data=str(tmp_path / "t.jsonl"))
    with pytest.raises(UserError, match="column 'text' .FT_TEXT_COLUMN. holds lists, not text"):
        load(s, tmp_path)


def test_a_missing_column_names_the_setting_and_the_columns_there(tmp_path):
    (tmp_path / "t.csv").write_text("sentence,label\na,1\n")
    s = settings_for(tmp_path, train_data=str(tmp_path / "t.csv"))
    with pytest.raises(UserError) as info:
        load(s, tmp_path)
    assert "no column 'text' (from FT_TEXT_COLUMN)" in str(info.value) and "sentence, label" in str(info.value)


def test_eval_labels_unseen_in_training_are_an_error(tmp_path):
    (tmp_path / "t.csv").write_text("text,label\na,x\nc,z\n")
    (tmp_path / "e.csv").write_text("text,label\nb,y\n")
    s = settings_for(tmp_path, train_data=str(tmp_path / "t.csv"), eval_data=str(tmp_path / "e.csv"))
    with pytest.raises(UserError, match="do not occur in the training data"):
        load(s, tmp_path)


def test_no_usable_files(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("x")
    s = settings_for(tmp_path, train_data=str(tmp_path / "d"))
    with pytest.raises(UserError, match="no csv, jsonl, json or parquet file"):
        load(s, tmp_path)


def test_missing_labels_are_reported(tmp_path):
    (tmp_path / "t.csv").write_text("text,label\na,1\nb,\n")
    s = settings_for(tmp_path, train_data=str(tmp_path / "t.csv"))
    with pytest.raises(UserError, match="1 row\\(s\\) have no value"):
        load(s, tmp_path)


def test_class_weights_auto_are_inverse_frequencies(tmp_path):
    (tmp_path / "t.csv").write_text("text,label\na,0\nb,0\nc,0\nd,1\n")
    s = settings_for(tmp_path, train_data=str(tmp_path / "t.csv"), class_weights="auto")
    weights = load(s, tmp_path).info["class_weights"]
    assert weights == pytest.approx([4 / 6, 4 / 2])


def test_explicit_class_weights_need_one_per_label(tmp_path):
    (tmp_path / "t.csv").write_text("text,label\na,0\nb,1\n")
    s = settings_for(tmp_path, train_data=str(tmp_path / "t.csv"), class_weights="1,2,3")
    with pytest.raises(UserError, match="FT_CLASS_WEIGHTS must be 'auto' or 2"):
        load(s, tmp_path)
