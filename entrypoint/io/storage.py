"""Where files live: an S3 prefix or a local folder, behind one small interface (`Store`).

S3 goes through `aws.client` (standard endpoint variables, botocore retries) and s3transfer's
multipart, multi-threaded transfers. A local folder behaves the same, with atomic writes, so a
local run, SageMaker's synced /opt/ml/checkpoints and an S3 prefix share all the code above.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Protocol

import boto3.s3.transfer
import botocore.exceptions

from entrypoint.errors import UserError, WorldError
from entrypoint.io import aws

log = logging.getLogger(__name__)

MULTIPART_THRESHOLD_BYTES = 16 * 1024 * 1024
MULTIPART_CHUNK_BYTES = 16 * 1024 * 1024
# S3 error codes that mean the URI or the permissions are wrong: retrying cannot help.
USER_ERROR_CODES = {"NoSuchBucket", "NoSuchKey", "AccessDenied", "InvalidBucketName", "404", "403", "AllAccessDisabled"}


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """('bucket', 'key/prefix') of an s3:// URI."""
    rest = uri[len("s3://") :]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise UserError(f"{uri!r} is not a valid S3 URI: expected s3://bucket/prefix.")
    return bucket, key


def as_prefix(uri: str) -> str:
    return uri if uri.endswith("/") else uri + "/"


def safe_destination(root: Path, relative: str) -> Path:
    """`root/relative`, refusing a key that would land outside `root` (`../`, absolute paths)."""
    parts = PurePosixPath(relative).parts
    if not relative or relative.startswith("/") or any(p in ("..", "") for p in parts):
        raise UserError(f"Refusing to download {relative!r}: the key would land outside {root}. Rename the object.")
    dest = (root / Path(*parts)).resolve()
    if not dest.is_relative_to(root.resolve()):
        raise UserError(f"Refusing to download {relative!r}: the key would land outside {root}. Rename the object.")
    return dest


@contextlib.contextmanager
def s3_errors(uri: str, action: str) -> Iterator[None]:
    """Turn boto errors into the user's (bad URI, permissions) or the world's (after retries)."""
    try:
        yield
    except botocore.exceptions.ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in USER_ERROR_CODES:
            raise UserError(
                f"Cannot {action} {uri}: {code}. Check the URI and that the job's role may access it."
            ) from exc
        raise WorldError(f"Cannot {action} {uri}: {exc}") from exc
    except (botocore.exceptions.BotoCoreError, boto3.exceptions.S3UploadFailedError, OSError) as exc:
        raise WorldError(f"Cannot {action} {uri}: {exc}") from exc


class Store(Protocol):
    uri: str

    def list(self, prefix: str = "") -> dict[str, int]: ...
    def read_bytes(self, key: str) -> bytes | None: ...
    def write_bytes(self, key: str, data: bytes, if_absent: bool = False) -> bool: ...
    def upload_file(self, path: Path, key: str) -> None: ...
    def download_file(self, key: str, path: Path) -> None: ...
    def delete(self, keys: Iterable[str]) -> None: ...


class S3Store:
    """Keys relative to an S3 prefix."""

    def __init__(self, uri: str, concurrency: int = 8):
        self.uri = as_prefix(uri)
        self.bucket, self.prefix = split_s3(self.uri)
        self.client = aws.client("s3")
        self.transfer = boto3.s3.transfer.TransferConfig(
            multipart_threshold=MULTIPART_THRESHOLD_BYTES,
            multipart_chunksize=MULTIPART_CHUNK_BYTES,
            max_concurrency=concurrency,
            use_threads=True,
        )

    def list(self, prefix: str = "") -> dict[str, int]:
        out = {}
        with s3_errors(self.uri + prefix, "list"):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix + prefix
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    out[obj["Key"][len(self.prefix) :]] = obj["Size"]
        return out

    def read_bytes(self, key: str) -> bytes | None:
        try:
            with s3_errors(self.uri + key, "read"):
                return self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)["Body"].read()
        except UserError as exc:
            if "NoSuchKey" in str(exc) or ": 404." in str(exc):
                return None
            raise

    def write_bytes(self, key: str, data: bytes, if_absent: bool = False) -> bool:
        extra = {"IfNoneMatch": "*"} if if_absent else {}
        try:
            with s3_errors(self.uri + key, "write"):
                self.client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data, **extra)
        except WorldError as exc:
            cause = exc.__cause__
            if (
                if_absent
                and isinstance(cause, botocore.exceptions.ClientError)
                and cause.response["Error"].get("Code") in ("PreconditionFailed", "412", "ConditionalRequestConflict")
            ):
                return False
            raise
        return True

    def upload_file(self, path: Path, key: str) -> None:
        with s3_errors(self.uri + key, "upload to"):
            self.client.upload_file(str(path), self.bucket, self.prefix + key, Config=self.transfer)

    def download_file(self, key: str, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        with s3_errors(self.uri + key, "download"):
            self.client.download_file(self.bucket, self.prefix + key, str(tmp), Config=self.transfer)
        os.replace(tmp, path)

    def delete(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        for start in range(0, len(keys), 1000):
            batch = [{"Key": self.prefix + k} for k in keys[start : start + 1000]]
            with s3_errors(self.uri, "delete from"):
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})


class LocalStore:
    """Keys relative to a local folder; writes are atomic (temporary file, then rename)."""

    def __init__(self, uri: str):
        self.root = Path(uri).expanduser()
        self.uri = str(self.root) + os.sep

    def list(self, prefix: str = "") -> dict[str, int]:
        out = {}
        if not self.root.is_dir():
            return out
        for path in self.root.rglob("*"):
            if path.is_file() and not path.name.endswith(".part"):
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    out[key] = path.stat().st_size
        return out

    def read_bytes(self, key: str) -> bytes | None:
        path = self.root / key
        return path.read_bytes() if path.is_file() else None

    def write_bytes(self, key: str, data: bytes, if_absent: bool = False) -> bool:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{os.getpid()}.part")
        tmp.write_bytes(data)
        if if_absent:
            try:
                os.link(tmp, path)  # fails if the name exists: an atomic create-if-absent
            except FileExistsError:
                return False
            finally:
                tmp.unlink()
            return True
        os.replace(tmp, path)
        return True

    def upload_file(self, path: Path, key: str) -> None:
        dest = self.root / key
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + f".{os.getpid()}.part")
        shutil.copyfile(path, tmp)
        os.replace(tmp, dest)

    def download_file(self, key: str, path: Path) -> None:
        src = self.root / key
        if not src.is_file():
            raise UserError(f"{src} does not exist.")
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, path)

    def delete(self, keys: Iterable[str]) -> None:
        for key in keys:
            (self.root / key).unlink(missing_ok=True)
        for folder in sorted({(self.root / k).parent for k in keys}, key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                if folder != self.root:
                    folder.rmdir()


def open_store(uri: str, concurrency: int = 8) -> Store:
    return S3Store(uri, concurrency) if is_s3(uri) else LocalStore(uri)


def download_many(store: Store, keys: Iterable[str], dest: Path, strip: str = "", concurrency: int = 8) -> list[Path]:
    """Download `keys` (each minus the leading `strip`) under `dest`, several at a time."""
    jobs = [(key, safe_destination(dest, key[len(strip) :])) for key in keys]
    with concurrent.futures.ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(lambda job: store.download_file(*job), jobs))
    return [path for _, path in jobs]


def upload_many(store: Store, files: dict[str, Path], concurrency: int = 8) -> None:
    """Upload {key: local path}, several at a time; the first failure is raised."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(lambda item: store.upload_file(item[1], item[0]), files.items()))


def fetch(uri: str, dest: Path, concurrency: int = 8) -> Path:
    """A local path for `uri`: a local path as it is, or an S3 object or prefix downloaded to `dest`.

    An S3 URI naming an object is downloaded as that one file; otherwise every object under the
    prefix is downloaded, keeping the folder structure below it.
    """
    if not is_s3(uri):
        path = Path(uri).expanduser()
        if not path.exists():
            raise UserError(f"{uri} does not exist.")
        return path
    bucket, key = split_s3(uri)
    parent, _, name = key.rstrip("/").rpartition("/")
    store = S3Store(f"s3://{bucket}/{parent}/" if parent else f"s3://{bucket}/", concurrency)
    listing = store.list(name)
    if name and not uri.endswith("/") and name in listing:
        path = safe_destination(dest, name)
        store.download_file(name, path)
        return path
    wanted = [k for k in listing if not name or k.startswith(name + "/")]
    wanted = [k for k in wanted if not k.endswith("/")]
    if not wanted:
        raise UserError(f"Nothing found at {uri}. Check the URI (a file, or a prefix holding files).")
    download_many(store, wanted, dest, strip=(name + "/") if name else "", concurrency=concurrency)
    return dest
