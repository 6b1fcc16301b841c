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


def _put(bucket, files: dict[str, bytes]) -> None:
    s3 = boto3.client("s3")
    for key, body in files.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)


def _tree(folder) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _identity(path) -> tuple[int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


def test_fetching_another_prefix_leaves_exactly_its_files(bucket, tmp_path):
    _put(bucket, {"a/one.csv": b"alpha\n", "a/sub/two.csv": b"beta\n", "b/three.csv": b"gamma\n"})
    dest = tmp_path / "data" / "train"
    storage.fetch(f"s3://{bucket}/a/", dest)
    assert _tree(dest) == {"one.csv": b"alpha\n", "sub/two.csv": b"beta\n"}
    assert storage.fetch(f"s3://{bucket}/b/", dest) == dest
    assert _tree(dest) == {"three.csv": b"gamma\n"}
    assert not (dest / "sub").exists()
    assert dest.with_name("train.fetched.json").is_file()  # the index lives next to the folder, not in it


def test_a_single_object_gets_a_folder_of_its_own_and_reuses_the_same_object(bucket, tmp_path):
    _put(bucket, {"data/train.csv": b"text,label\n", "data/more.csv": b"text,label\n"})
    dest = tmp_path / "dest"
    storage.fetch(f"s3://{bucket}/data/", dest)
    before = _identity(dest / "train.csv")
    path = storage.fetch(f"s3://{bucket}/data/train.csv", dest)
    assert path == dest / "train.csv"
    assert _tree(dest) == {"train.csv": b"text,label\n"}
    assert _identity(path) == before  # another URI, but the same bucket, key and ETag: not downloaded again


def test_unchanged_objects_are_reused_and_changed_ones_downloaded_again(bucket, tmp_path, caplog):
    _put(bucket, {"d/same.csv": b"x,y\n1,2\n", "d/changed.csv": b"x,y\n1,2\n"})
    dest = tmp_path / "dest"
    storage.fetch(f"s3://{bucket}/d/", dest)
    same, changed = _identity(dest / "same.csv"), _identity(dest / "changed.csv")

    caplog.set_level("INFO", logger=storage.__name__)
    storage.fetch(f"s3://{bucket}/d/", dest)
    assert (_identity(dest / "same.csv"), _identity(dest / "changed.csv")) == (same, changed)
    assert "2 file(s) reused, 0 downloaded" in caplog.text

    _put(bucket, {"d/changed.csv": b"x,y\n3,4\n"})  # the same size: only the ETag tells
    caplog.clear()
    storage.fetch(f"s3://{bucket}/d/", dest)
    assert _identity(dest / "same.csv") == same
    assert (dest / "changed.csv").read_bytes() == b"x,y\n3,4\n"
    assert "1 file(s) reused, 1 downloaded" in caplog.text


def test_an_interrupted_fetch_is_not_trusted(bucket, tmp_path):
    _put(bucket, {"d/a.csv": b"x,y\n1,2\n", "d/b.csv": b"x,y\n5,6\n"})
    dest = tmp_path / "dest"
    storage.fetch(f"s3://{bucket}/d/", dest)
    # As a fetch cut short leaves it: no index, a torn file of the right size, partial downloads
    # (ours and s3transfer's temporary name) of an object since deleted.
    dest.with_name("dest.fetched.json").unlink(missing_ok=True)
    (dest / "a.csv").write_bytes(b"x,y\n\0\0\0\0")
    (dest / "c.csv.part").write_bytes(b"x,y")
    (dest / "c.csv.part.6fA2b9E1").write_bytes(b"x,y")
    storage.fetch(f"s3://{bucket}/d/", dest)
    assert _tree(dest) == {"a.csv": b"x,y\n1,2\n", "b.csv": b"x,y\n5,6\n"}

    # A file changed on disk after its download (a different size) is not trusted either.
    (dest / "b.csv").write_bytes(b"x")
    storage.fetch(f"s3://{bucket}/d/", dest)
    assert _tree(dest) == {"a.csv": b"x,y\n1,2\n", "b.csv": b"x,y\n5,6\n"}


def test_listing_objects_gives_sizes_and_etags(bucket):
    _put(bucket, {"p/k": b"hi"})
    store = storage.S3Store(f"s3://{bucket}/p/")
    assert store.list_objects() == {"k": storage.ObjectInfo(size=2, etag='"49f68a5c8493ec2c0bf489821c21fc3b"')}
    assert store.list() == {"k": 2}


def test_the_write_check_leaves_nothing_behind(bucket, tmp_path):
    storage.check_writable({"FT_OUTPUT_URI": f"s3://{bucket}/runs/1/", "FT_CHECKPOINT_URI": str(tmp_path / "a" / "b")})
    assert storage.S3Store(f"s3://{bucket}/").list() == {}
    assert list(tmp_path.iterdir()) == []  # not even the folders it made to write there


def test_the_write_check_names_the_setting_of_a_location_it_cannot_write(bucket, tmp_path):
    with pytest.raises(UserError, match=r"^FT_CACHE_URI: Cannot write s3://no-such-bucket-x/c/.*does not exist"):
        storage.check_writable({"FT_OUTPUT_URI": f"s3://{bucket}/o/", "FT_CACHE_URI": "s3://no-such-bucket-x/c/"})
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match=r"^FT_OUTPUT_URI: cannot write to .*file/out"):
        storage.check_writable({"FT_OUTPUT_URI": str(tmp_path / "file" / "out")})
