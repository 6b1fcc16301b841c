"""The S3 adaptor against a real S3 endpoint (moto server over HTTP)."""

import boto3
import pytest

from entrypoint.errors import UserError
from entrypoint.io import storage


def test_upload_list_download_roundtrip_with_multipart(bucket, tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * (storage.MULTIPART_THRESHOLD_BYTES + 1024))  # forces a multipart upload
    store = storage.S3Store(f"s3://{bucket}/run")
    storage.upload_many(store, {"a/big.bin": big, "small.txt": _file(tmp_path / "s.txt", "hi")})
    assert store.list() == {"a/big.bin": big.stat().st_size, "small.txt": 2}
    paths = storage.download_many(store, ["a/big.bin", "small.txt"], tmp_path / "out")
    assert paths[0].read_bytes() == big.read_bytes() and paths[1].read_text() == "hi"


def test_conditional_write_refuses_to_overwrite(bucket):
    store = storage.S3Store(f"s3://{bucket}/p/")
    assert store.write_bytes("k", b"1", if_absent=True) is True
    assert store.write_bytes("k", b"2", if_absent=True) is False
    assert store.read_bytes("k") == b"1"
    assert store.read_bytes("missing") is None


def test_fetch_a_single_object_or_a_whole_prefix(bucket, tmp_path):
    s3 = boto3.client("s3")
    for key in ("data/train.csv", "data/more/part.csv", "data2/other.csv"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"text,label\n")
    one = storage.fetch(f"s3://{bucket}/data/train.csv", tmp_path / "one")
    assert one == tmp_path / "one" / "train.csv" and one.is_file()
    folder = storage.fetch(f"s3://{bucket}/data/", tmp_path / "many")
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.csv")) == ["more/part.csv", "train.csv"]


def test_keys_that_escape_the_target_folder_are_refused(bucket, tmp_path):
    boto3.client("s3").put_object(Bucket=bucket, Key="evil/../../etc/passwd", Body=b"x")
    with pytest.raises(UserError, match="would land outside"):
        storage.fetch(f"s3://{bucket}/evil/", tmp_path / "dest")
    assert not (tmp_path / "etc").exists()


@pytest.mark.parametrize("key", ["../x", "a/../../x", "/abs", ""])
def test_safe_destination(tmp_path, key):
    with pytest.raises(UserError):
        storage.safe_destination(tmp_path, key)


def test_missing_bucket_is_the_users_error(aws_env, tmp_path):
    with pytest.raises(UserError, match="NoSuchBucket"):
        storage.fetch("s3://no-such-bucket-here/data.csv", tmp_path)


def test_nothing_at_a_prefix_says_so(bucket, tmp_path):
    with pytest.raises(UserError, match="Nothing found at"):
        storage.fetch(f"s3://{bucket}/empty/", tmp_path)


def test_local_store_writes_atomically_and_conditionally(tmp_path):
    store = storage.LocalStore(str(tmp_path / "s"))
    assert store.write_bytes("a/b", b"1", if_absent=True)
    assert not store.write_bytes("a/b", b"2", if_absent=True)
    assert store.list() == {"a/b": 1}
    store.delete(["a/b"])
    assert store.list() == {} and not (tmp_path / "s" / "a").exists()


def _file(path, text):
    path.write_text(text)
    return path
