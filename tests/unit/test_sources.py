"""Which files a job takes from a Hub repository, and the Hub mirror at FT_CACHE_URI (a moto S3
bucket and the fake Hub over HTTP)."""

import json
from pathlib import Path
from types import SimpleNamespace

import boto3
import pytest

from entrypoint.config.platform import Runtime
from entrypoint.config.settings import load_settings
from entrypoint.durability.manifests import MANIFEST
from entrypoint.errors import UserError, WorldError
from entrypoint.io import hub
from entrypoint.job import sources

LABEL = "org/tiny@main"


def sizes(*names):
    return dict.fromkeys(names, 1)


def test_a_model_takes_its_top_level_files_and_safetensors_weights_only():
    files = sizes(
        "config.json",
        "tokenizer.json",
        "model.safetensors",
        "pytorch_model.bin",
        "tf_model.h5",
        "flax_model.msgpack",
        "modeling_custom.py",
        "onnx/model.onnx",
        "1_Pooling/config.json",
        "README.md",
        ".gitattributes",
    )
    chosen = sources.model_files(files, allow_pickle=True, label=LABEL)
    assert chosen == ["README.md", "config.json", "model.safetensors", "tokenizer.json"]


def test_sharded_safetensors_come_with_their_index():
    files = sizes("config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
    files["model.safetensors.index.json"] = 1
    assert "model.safetensors.index.json" in sources.model_files(files, False, LABEL)


def test_pickle_weights_only_with_the_users_consent():
    files = sizes("config.json", "pytorch_model.bin", "vocab.txt")
    with pytest.raises(UserError, match="pickle weights only.*FT_ALLOW_PICKLE_WEIGHTS=true"):
        sources.model_files(files, allow_pickle=False, label=LABEL)
    assert sources.model_files(files, allow_pickle=True, label=LABEL) == [
        "config.json",
        "pytorch_model.bin",
        "vocab.txt",
    ]


@pytest.mark.parametrize(
    ("files", "message"),
    [(sizes("model.safetensors"), "no config.json"), (sizes("config.json", "vocab.txt"), "has no weights")],
)
def test_not_a_model(files, message):
    with pytest.raises(UserError, match=message):
        sources.model_files(files, allow_pickle=True, label=LABEL)


@pytest.mark.parametrize(
    ("path", "chosen"),
    [
        ("", ["data/test.csv", "data/train.csv", "extra/more.csv"]),
        ("data/train.csv", ["data/train.csv"]),
        ("data", ["data/test.csv", "data/train.csv"]),
        ("*/t*.csv", ["data/test.csv", "data/train.csv"]),
    ],
)
def test_data_files(path, chosen):
    files = sizes("README.md", ".gitattributes", "data/train.csv", "data/test.csv", "extra/more.csv", "x.py")
    assert sources.data_files(files, path, "org/sst@main", "FT_TRAIN_DATA") == chosen


def test_no_data_files_at_a_path_lists_those_there_are():
    with pytest.raises(UserError, match=r"FT_TRAIN_DATA: org/sst@main has no csv.*'nope'.*data/train.csv"):
        sources.data_files(sizes("data/train.csv"), "nope", "org/sst@main", "FT_TRAIN_DATA")


def test_mirror_layout():
    repo = hub.HubRepo("model", "org/tiny", "refs/pr/1")
    assert sources.repo_folder(repo) == "hub/models/org--tiny"
    assert sources.ref_key(repo) == "hub/models/org--tiny/refs/refs%2Fpr%2F1.json"


MODEL = {"config.json": b'{"a": 1}', "tokenizer.json": b"{}", "model.safetensors": b"w" * 2000}


def settings(model, allow_pickle=False):
    return SimpleNamespace(model=model, allow_pickle_weights=allow_pickle, transfer_concurrency=4)


def test_the_first_attempt_mirrors_and_later_ones_never_call_the_hub(fake_hub, bucket, tmp_path):
    commit = fake_hub.add("org/tiny", MODEL)
    cache = f"s3://{bucket}/cache/"
    first = sources.Mirror(cache, tmp_path / "w1", 4)
    source = sources.model_source(settings("org/tiny"), first, tmp_path / "w1")
    assert source.commit == commit and source.record() == {"hub_id": "org/tiny", "revision": "main", "commit": commit}
    folder = sources.fetch_model(settings("org/tiny"), source, first, tmp_path / "w1")
    assert (folder / "model.safetensors").read_bytes() == MODEL["model.safetensors"]
    keys = {o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=bucket)["Contents"]}
    entry = f"cache/hub/models/org--tiny/{commit}"
    assert {f"{entry}/{name}" for name in MODEL} | {
        f"{entry}/{MANIFEST}",
        "cache/hub/models/org--tiny/refs/main.json",
    } == keys
    ref = json.loads(
        boto3.client("s3").get_object(Bucket=bucket, Key="cache/hub/models/org--tiny/refs/main.json")["Body"].read()
    )
    assert ref["commit"] == commit

    # main moves on and the Hub goes down: another attempt (another machine) still gets the pinned commit
    fake_hub.add("org/tiny", dict(MODEL, **{"model.safetensors": b"v" * 2000}))
    fake_hub.fail_with = 503
    asked = fake_hub.count()
    again = sources.Mirror(cache, tmp_path / "w2", 4)
    source2 = sources.model_source(settings("org/tiny"), again, tmp_path / "w2")
    folder2 = sources.fetch_model(settings("org/tiny"), source2, again, tmp_path / "w2")
    assert source2.commit == commit and fake_hub.count() == asked
    assert (folder2 / "model.safetensors").read_bytes() == MODEL["model.safetensors"]


def test_the_first_download_is_reused_on_the_same_machine(fake_hub, bucket, tmp_path, caplog):
    fake_hub.add("org/tiny", MODEL)
    mirror = sources.Mirror(f"s3://{bucket}/cache/", tmp_path, 4)
    source = sources.model_source(settings("org/tiny"), mirror, tmp_path)
    with caplog.at_level("INFO"):
        sources.fetch_model(settings("org/tiny"), source, mirror, tmp_path)
    assert "FT_MODEL: 3 file(s) reused, 1 downloaded" in caplog.text  # the manifest alone


def test_a_corrupt_mirror_is_not_used_and_is_mirrored_again(fake_hub, bucket, tmp_path):
    commit = fake_hub.add("org/tiny", MODEL)
    mirror = sources.Mirror(f"s3://{bucket}/cache/", tmp_path / "w1", 4)
    source = sources.model_source(settings("org/tiny"), mirror, tmp_path / "w1")
    key = f"cache/hub/models/org--tiny/{commit}/model.safetensors"
    boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=b"x" * 2000)  # same size, other bytes
    with pytest.raises(WorldError, match="incomplete or corrupt"):
        sources.fetch_model(settings("org/tiny"), source, mirror, tmp_path / "w2")
    again = sources.model_source(settings("org/tiny"), mirror, tmp_path / "w3")  # the manifest was removed
    folder = sources.fetch_model(settings("org/tiny"), again, mirror, tmp_path / "w3")
    assert (folder / "model.safetensors").read_bytes() == MODEL["model.safetensors"]


def test_files_without_a_manifest_are_mirrored_again(fake_hub, bucket, tmp_path):
    """An attempt killed between the files and the manifest leaves files no later attempt uses."""
    commit = fake_hub.add("org/tiny", MODEL)
    entry = f"cache/hub/models/org--tiny/{commit}"
    boto3.client("s3").put_object(Bucket=bucket, Key=f"{entry}/model.safetensors", Body=b"x" * 2000)
    mirror = sources.Mirror(f"s3://{bucket}/cache/", tmp_path, 4)
    folder = sources.fetch_model(
        settings("org/tiny"), sources.model_source(settings("org/tiny"), mirror, tmp_path), mirror, tmp_path
    )
    assert (folder / "model.safetensors").read_bytes() == MODEL["model.safetensors"]
    assert fake_hub.count("/resolve/") == 2 * len(MODEL)  # HEAD and GET of each file


def test_a_local_cache_folder_works_the_same(fake_hub, tmp_path):
    commit = fake_hub.add("org/tiny", MODEL)
    mirror = sources.Mirror(str(tmp_path / "cache"), tmp_path / "work", 4)
    source = sources.model_source(settings("org/tiny@" + commit), mirror, tmp_path / "work")
    folder = sources.fetch_model(settings("org/tiny@" + commit), source, mirror, tmp_path / "work")
    assert folder == tmp_path / "cache" / "hub" / "models" / "org--tiny" / commit
    assert (tmp_path / "cache" / "hub" / "models" / "org--tiny" / "refs" / f"{commit}.json").is_file()


def test_a_hub_data_set_is_identified_by_commit_and_read_as_the_files_chosen(fake_hub, bucket, tmp_path):
    files = {"a/train.csv": b"text,label\nx,1\n", "a/test.csv": b"text,label\n", "b/c.csv": b"text,label\n"}
    commit = fake_hub.add("org/sst", files, kind="dataset")
    mirror = sources.Mirror(f"s3://{bucket}/cache/", tmp_path, 4)
    job = load_settings({"FT_MODEL": "m", "FT_TRAIN_DATA": "hf://datasets/org/sst/a/train.csv"}, Runtime("local"))
    found = sources.data_sources(job, mirror, tmp_path)
    assert found["FT_TRAIN_DATA"].identity == {"hub": "org/sst", "commit": commit, "files": ["a/train.csv"]}
    local = sources.local_data(job, found, mirror, tmp_path)
    folder = Path(local.train_data)
    assert [p.relative_to(folder).as_posix() for p in folder.rglob("*.csv")] == ["a/train.csv"]


def test_s3_and_local_data_are_identified_by_content(bucket, tmp_path):
    s3 = boto3.client("s3")
    s3.put_object(Bucket=bucket, Key="d/train.csv", Body=b"a")
    before = sources.identify(f"s3://{bucket}/d/", "FT_TRAIN_DATA", 4)
    s3.put_object(Bucket=bucket, Key="d/train.csv", Body=b"b")
    assert sources.identify(f"s3://{bucket}/d/", "FT_TRAIN_DATA", 4) != before
    (tmp_path / "t.csv").write_text("a")
    local = sources.identify(str(tmp_path / "t.csv"), "FT_TRAIN_DATA", 4)
    (tmp_path / "t.csv").write_text("b")
    assert sources.identify(str(tmp_path / "t.csv"), "FT_TRAIN_DATA", 4) != local
