"""Where files live: an S3 prefix or a local folder, behind one small interface (`Store`).

S3 goes through `aws.client` (standard endpoint variables, botocore retries) and s3transfer's
multipart, multi-threaded transfers. A local folder behaves the same, with atomic writes, so a
local run, SageMaker's synced /opt/ml/checkpoints and an S3 prefix share all the code above.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Protocol

import boto3.s3.transfer
import botocore.exceptions

from entrypoint.errors import UserError, WorldError
from entrypoint.io import aws
from entrypoint.io.progress import Progress

log = logging.getLogger(__name__)

MULTIPART_THRESHOLD_BYTES = 16 * 1024 * 1024
MULTIPART_CHUNK_BYTES = 16 * 1024 * 1024
# S3 error codes that mean the URI or the permissions are wrong: retrying cannot help.
USER_ERROR_CODES = {"NoSuchBucket", "NoSuchKey", "AccessDenied", "InvalidBucketName", "404", "403", "AllAccessDisabled"}
# The credentials themselves are refused: a rerun with the same ones fails the same way.
CREDENTIAL_CODES = {
    "ExpiredToken",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "TokenRefreshRequired",
}
# The bucket is in another region than the client's (botocore follows S3's redirects where it can).
REGION_CODES = {"PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException", "301"}


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
        if code in USER_ERROR_CODES | CREDENTIAL_CODES | REGION_CODES:
            raise UserError(f"Cannot {action} {uri}: {user_fix(code, uri)}") from exc
        raise WorldError(f"Cannot {action} {uri}: {exc}") from exc
    except (botocore.exceptions.BotoCoreError, boto3.exceptions.S3UploadFailedError, OSError) as exc:
        raise WorldError(f"Cannot {action} {uri}: {exc}") from exc


def user_fix(code: str, uri: str) -> str:
    """What an S3 error code that retrying cannot cure means, and what to do."""
    if code == "NoSuchBucket":
        return f"the bucket {uri[len('s3://') :].partition('/')[0]!r} does not exist (NoSuchBucket). Check the URI."
    if code in ("AccessDenied", "403", "AllAccessDisabled"):
        shown = "AccessDenied (403)" if code == "403" else code  # a HEAD request's 403 has no body
        return (
            f"{shown}. Grant the job's role access to it (s3:ListBucket and s3:GetObject to read; s3:PutObject "
            "and s3:DeleteObject where the job writes), or choose another location."
        )
    if code in CREDENTIAL_CODES:
        return (
            f"the AWS credentials were refused ({code}). Renew them (a session token expires) or let the job use "
            "its role's credentials (unset AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN)."
        )
    if code in REGION_CODES:
        return f"the bucket is in another region than the job's ({code}). Set AWS_REGION to the bucket's region."
    return f"{code}. Check the URI and that the job's role may access it."


@dataclasses.dataclass(frozen=True)
class ObjectInfo:
    size: int
    etag: str  # S3's ETag, quotes included: changes whenever the object is written again


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
        return {key: obj.size for key, obj in self.list_objects(prefix).items()}

    def list_objects(self, prefix: str = "") -> dict[str, ObjectInfo]:
        """{key: size and ETag} of the objects under `prefix`."""
        out: dict[str, ObjectInfo] = {}
        with s3_errors(self.uri + prefix, "list"):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix + prefix
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    out[obj["Key"][len(self.prefix) :]] = ObjectInfo(obj["Size"], obj["ETag"])
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
        out: dict[str, int] = {}
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


def check_writable(locations: Mapping[str, str]) -> None:
    """Write a small object at each of {label: uri} and delete it again: a missing bucket, a refused
    write or an unwritable folder is the user's error, named by its label, found before any download
    and not after training. Nothing is left behind (folders the check created are removed)."""
    for label, uri in locations.items():
        key = f".finetune-write-check-{uuid.uuid4().hex}"
        created = [] if is_s3(uri) else _missing_folders(Path(uri).expanduser())
        try:
            store = open_store(uri, concurrency=1)
            store.write_bytes(key, b"")
            store.delete([key])
        except UserError as exc:
            raise UserError(f"{label}: {exc}") from exc
        except OSError as exc:
            raise UserError(
                f"{label}: cannot write to {uri} ({exc}). Point it at a folder this job may write to."
            ) from exc
        finally:
            for folder in created:
                with contextlib.suppress(OSError):
                    folder.rmdir()


def _missing_folders(path: Path) -> list[Path]:
    """`path` and its parents that do not exist yet, deepest first."""
    missing = []
    for candidate in (path, *path.parents):
        if candidate.exists():
            break
        missing.append(candidate)
    return missing


def read_file(uri: str) -> bytes | None:
    """The contents of one file, an S3 object or a local path (e.g. FT_CONFIG); None if there is none."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        return S3Store(f"s3://{bucket}/", concurrency=1).read_bytes(key) if key else None
    path = Path(uri).expanduser()
    return path.read_bytes() if path.is_file() else None


def download_many(
    store: Store,
    keys: Iterable[str],
    dest: Path,
    strip: str = "",
    concurrency: int = 8,
    sizes: Mapping[str, int] | None = None,
) -> list[Path]:
    """Download `keys` (each minus the leading `strip`) under `dest`, several at a time; with the
    keys' `sizes`, the progress is told as it goes (progress.Progress)."""
    jobs = [(key, safe_destination(dest, key[len(strip) :])) for key in keys]
    told = Progress(f"downloading {store.uri}{strip}", sum((sizes or {}).get(k, 0) for k, _ in jobs))

    def one(job: tuple[str, Path]) -> None:
        store.download_file(*job)
        told.add((sizes or {}).get(job[0], 0))

    with concurrent.futures.ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(one, jobs))
    if sizes:
        told.finish()
    return [path for _, path in jobs]


def upload_many(store: Store, files: dict[str, Path], concurrency: int = 8) -> None:
    """Upload {key: local path}, several at a time, telling the progress; the first failure is raised."""
    sizes = {key: path.stat().st_size for key, path in files.items()}
    told = Progress(f"uploading to {store.uri}", sum(sizes.values()))

    def one(item: tuple[str, Path]) -> None:
        store.upload_file(item[1], item[0])
        told.add(sizes[item[0]])

    with concurrent.futures.ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(one, files.items()))
    told.finish()


def fetch(uri: str, dest: Path, concurrency: int = 8, label: str = "download") -> Path:
    """A local path for `uri`: a local path as it is, or an S3 object or prefix downloaded to `dest`.

    An S3 URI naming an object is downloaded as that one file; otherwise every object under the
    prefix is downloaded, keeping the folder structure below it. Either way `dest` then holds
    exactly those objects: anything else there (an earlier job's files, partial downloads) is
    removed, and a file kept from an earlier fetch is reused only if it is the same object.
    """
    if not is_s3(uri):
        path = Path(uri).expanduser()
        if not path.exists():
            raise UserError(f"{label}: {uri} does not exist on this machine. Check the path, or give an s3:// URI.")
        return path
    store, name, strip, wanted = s3_objects(uri, concurrency, label)
    single = not strip and bool(name)
    for rel in wanted:  # refuse a bad key before anything in `dest` is touched
        safe_destination(dest, rel)
    with folder_lock(dest):  # one fetch into `dest` at a time on this machine (local processes share it)
        index = read_index(dest)
        reused = reusable(wanted, index.get("objects", {}), local_files(dest))
        # Before the folder changes, the index must only vouch for files that stay as they are.
        write_index(dest, uri, {rel: wanted[rel] for rel in reused})
        remove_all_but(dest, reused)
        missing = [rel for rel in wanted if rel not in reused]
        try:
            sizes = {strip + rel: int(wanted[rel]["size"]) for rel in missing}
            download_many(store, list(sizes), dest, strip=strip, concurrency=concurrency, sizes=sizes)
        except UserError as exc:  # e.g. AccessDenied: the listing may be allowed and the reading not
            raise UserError(f"{label}: {exc}") from exc
        write_index(dest, uri, wanted)  # only now is the whole folder vouched for
    megabytes = sum(wanted[rel]["size"] for rel in missing) / 1e6
    log.info("%s: %d file(s) reused, %d downloaded (%.1f MB) from %s", label, len(reused), len(missing), megabytes, uri)
    return safe_destination(dest, name) if single else dest


def s3_objects(uri: str, concurrency: int = 8, label: str = "") -> tuple[S3Store, str, str, dict[str, dict]]:
    """What `fetch` downloads for an S3 `uri`, without downloading it: (the store of the parent
    prefix, the last name of the URI, the prefix stripped from keys, {relative path: {bucket, key,
    size, etag}}). An object named by the URI is the one file; else every object under the prefix."""
    bucket, key = split_s3(uri)
    parent, _, name = key.rstrip("/").rpartition("/")
    store = S3Store(f"s3://{bucket}/{parent}/" if parent else f"s3://{bucket}/", concurrency)
    try:
        listing = store.list_objects(name)
    except UserError as exc:
        raise UserError(f"{label}: {exc}" if label else str(exc)) from exc
    single = bool(name) and not uri.endswith("/") and name in listing
    strip = "" if single or not name else name + "/"
    keys = [name] if single else [k for k in listing if k.startswith(strip) and not k.endswith("/")]
    if not keys:
        where = f"{label}: " if label else ""
        raise UserError(f"{where}Nothing found at {uri}. Check the URI (a file, or a prefix holding files).")
    wanted = {
        k[len(strip) :]: {"bucket": bucket, "key": store.prefix + k, "size": listing[k].size, "etag": listing[k].etag}
        for k in keys
    }
    return store, name, strip, wanted


def adopt(folder: Path, uri: str, concurrency: int = 8) -> None:
    """Record that `folder` holds the objects under the S3 prefix `uri` (it was just uploaded from
    there), so that a later `fetch` of `uri` into `folder` on this machine reuses its files. Only
    the files of the same size are vouched for; nothing is recorded for a local `uri`."""
    if not is_s3(uri):
        return
    _, _, _, wanted = s3_objects(as_prefix(uri), concurrency)
    present = local_files(folder)
    write_index(folder, uri, {rel: src for rel, src in wanted.items() if present.get(rel) == src["size"]})


def reusable(wanted: dict[str, dict], recorded: dict[str, dict], present: dict[str, int]) -> set[str]:
    """The relative paths whose local file is the very object wanted: the index records the same
    bucket, key, size and ETag for it, and the file on disk still has that size."""
    return {rel for rel, src in wanted.items() if recorded.get(rel) == src and present.get(rel) == src["size"]}


def index_path(dest: Path) -> Path:
    """Where `fetch` records what `dest` holds: next to it, since readers take every file inside."""
    return dest.with_name(dest.name + ".fetched.json")


def read_index(dest: Path) -> dict:
    try:
        index = json.loads(index_path(dest).read_text())
    except (OSError, ValueError):
        return {}  # none, or unreadable: nothing in `dest` is trusted
    return index if isinstance(index, dict) and isinstance(index.get("objects"), dict) else {}


def write_index(dest: Path, uri: str, objects: dict[str, dict]) -> None:
    path = index_path(dest)
    tmp = path.with_name(path.name + f".{os.getpid()}.part")
    tmp.write_text(json.dumps({"uri": uri, "objects": objects}, indent=1, sort_keys=True))
    os.replace(tmp, path)


def local_files(dest: Path) -> dict[str, int]:
    """{relative path: size} of the regular files under `dest` (links are not followed)."""
    out: dict[str, int] = {}
    for folder, _, names in os.walk(dest):
        for name in names:
            path = Path(folder, name)
            if path.is_file() and not path.is_symlink():
                out[path.relative_to(dest).as_posix()] = path.stat().st_size
    return out


def remove_all_but(dest: Path, keep: set[str]) -> None:
    """Remove everything under `dest` but the files `keep` (relative paths), then empty folders."""
    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        dest.unlink()
    for folder, dirs, names in os.walk(dest, topdown=False):
        for name in names + [d for d in dirs if Path(folder, d).is_symlink()]:
            path = Path(folder, name)
            if path.relative_to(dest).as_posix() not in keep:
                path.unlink()
        if Path(folder) != dest:
            with contextlib.suppress(OSError):  # not empty: it holds a kept file
                Path(folder).rmdir()


@contextlib.contextmanager
def folder_lock(dest: Path) -> Iterator[None]:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with dest.with_name(dest.name + ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
