"""Telling Hub ids from S3 URIs and paths, and huggingface_hub's failures as exit codes, against the
fake Hub (tests/support/fake_hub.py) over HTTP."""

import os

import pytest

from entrypoint.errors import ExitCode, FinetuneError, UserError
from entrypoint.io import hub


def never(_path):
    return False


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("s3://bucket/models/tiny/", "s3"),
        ("/opt/ml/input/data/model", "local"),  # absolute: a path even when it does not exist
        ("./models/tiny", "local"),
        ("../tiny", "local"),
        ("~/models/tiny", "local"),
        ("org/name", "hub"),
        ("sentence-transformers/all-MiniLM-L6-v2", "hub"),
        ("org/name@v1.0", "hub"),
        ("org/name@0123456789abcdef0123456789abcdef01234567", "hub"),
        ("gpt2", "local"),  # no org: not a Hub id (reported as a missing path)
        ("org/name/extra", "local"),
        ("org/-bad", "local"),
    ],
)
def test_model_source(value, kind):
    assert hub.model_source(value, never) == kind


def test_an_existing_relative_folder_is_a_path_even_if_it_looks_like_a_hub_id(tmp_path, monkeypatch):
    (tmp_path / "org" / "name").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert hub.model_source("org/name", os.path.exists) == "local"
    assert hub.model_source("org/other", os.path.exists) == "hub"


def test_parse_model():
    assert hub.parse_model("org/name") == hub.HubRepo("model", "org/name", "main")
    assert hub.parse_model("org/name@v2").revision == "v2"
    with pytest.raises(UserError, match="not a Hub id"):
        hub.parse_model("org/name@")


@pytest.mark.parametrize(
    ("uri", "repo", "revision", "path"),
    [
        ("hf://datasets/org/sst", "org/sst", "main", ""),
        ("hf://datasets/org/sst/", "org/sst", "main", ""),
        ("hf://datasets/org/sst@v1/data/train.csv", "org/sst", "v1", "data/train.csv"),
        ("hf://datasets/org/sst/data/*.parquet", "org/sst", "main", "data/*.parquet"),
    ],
)
def test_parse_data(uri, repo, revision, path):
    assert hub.parse_data(uri, "FT_TRAIN_DATA") == hub.HubRepo("dataset", repo, revision, path)


@pytest.mark.parametrize("uri", ["hf://org/sst", "hf://datasets/sst", "hf://datasets/org/sst@"])
def test_malformed_data_uris_are_the_users_error(uri):
    with pytest.raises(UserError, match="FT_EVAL_DATA"):
        hub.parse_data(uri, "FT_EVAL_DATA")


def test_resolve_and_download_a_commit(fake_hub, tmp_path):
    files = {"config.json": b"{}", "model.safetensors": b"w" * 100, "sub/x.txt": b"x"}
    commit = fake_hub.add("org/tiny", files)
    snapshot = hub.resolve(hub.parse_model("org/tiny"), "FT_MODEL")
    assert snapshot.commit == commit
    assert snapshot.files == {"config.json": 2, "model.safetensors": 100, "sub/x.txt": 1}
    folder = hub.download(snapshot, ["config.json", "model.safetensors"], tmp_path, "FT_MODEL")
    assert (folder / "model.safetensors").read_bytes() == b"w" * 100
    assert not (folder / "sub").exists()


@pytest.mark.parametrize(
    ("setup", "revision", "code", "message"),
    [
        ("gated", "main", ExitCode.USER_ERROR, "is gated (401); no HF_TOKEN is set"),
        ("missing", "main", ExitCode.USER_ERROR, "was not found (404)"),
        ("present", "nope", ExitCode.USER_ERROR, "no such revision (404)"),
        ("outage", "main", ExitCode.WORLD_ERROR, "the Hub answered 503"),
    ],
)
def test_hub_failures_are_the_users_or_the_worlds(fake_hub, tmp_path, setup, revision, code, message):
    fake_hub.add("org/tiny", {"config.json": b"{}"}, token="secret" if setup == "gated" else None)
    fake_hub.fail_with = 503 if setup == "outage" else None
    repo = hub.parse_model(f"org/{'nothing' if setup == 'missing' else 'tiny'}@{revision}")
    with pytest.raises(FinetuneError) as caught:
        hub.download(hub.resolve(repo, "FT_MODEL"), ["config.json"], tmp_path, "FT_MODEL")
    assert caught.value.exit_code == code
    assert message in str(caught.value) and repo.repo_id in str(caught.value)


def test_a_token_without_access_is_named(fake_hub, tmp_path, monkeypatch):
    fake_hub.add("org/gated", {"config.json": b"{}"}, token="secret")
    monkeypatch.setenv("HF_TOKEN", "wrong")
    with pytest.raises(UserError, match=r"is gated \(403\); the token in HF_TOKEN has no access"):
        hub.download(hub.resolve(hub.parse_model("org/gated"), "FT_MODEL"), ["config.json"], tmp_path, "FT_MODEL")
    monkeypatch.setenv("HF_TOKEN", "secret")
    folder = hub.download(hub.resolve(hub.parse_model("org/gated"), "FT_MODEL"), ["config.json"], tmp_path, "x")
    assert (folder / "config.json").read_bytes() == b"{}"
