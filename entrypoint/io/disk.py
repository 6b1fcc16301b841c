"""A full local disk is the user's error, not the world's: a retry lands on a disk of the same size
and fails the same way, so the job says which folder filled up and how much room it needed."""

from __future__ import annotations

import contextlib
import errno
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from entrypoint.errors import UserError
from entrypoint.io import storage

FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
FULL_MESSAGES = ("No space left on device", "Disk quota exceeded", "StorageFull")
# torch.save reports a failed write without its errno ("PytorchStreamWriter failed writing file",
# "unexpected pos"); with these, a disk left with less than NEARLY_FULL_BYTES free counts as full.
OPAQUE_WRITE_FAILURES = ("PytorchStreamWriter", "inline_container.cc", "file write failed")
NEARLY_FULL_BYTES = 64 * 1024 * 1024


class DiskFull(UserError):
    """The local disk of a folder the job writes to has no room left."""

    def __init__(self, message: str, folder: Path, needed_bytes: int | None):
        self.folder = folder
        self.needed_bytes = needed_bytes
        super().__init__(message)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        pending += [current.__cause__, current.__context__]


def free_bytes(folder: Path) -> int | None:
    """Free space on the disk of `folder` (or of its nearest existing parent)."""
    for candidate in (folder, *folder.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None


def is_disk_full(exc: BaseException, folder: Path, free: Callable[[Path], int | None] = free_bytes) -> bool:
    """Whether `exc` (or an error it came from) says the disk of `folder` is full."""
    for error in _chain(exc):
        if isinstance(error, OSError) and error.errno in FULL_ERRNOS:
            return True
        if any(marker in str(error) for marker in FULL_MESSAGES):
            return True
    if any(marker in str(error) for error in _chain(exc) for marker in OPAQUE_WRITE_FAILURES):
        left = free(folder)
        return left is not None and left < NEARLY_FULL_BYTES
    return False


def megabytes(size: int | None) -> str:
    return "?" if size is None else f"{size / 1e6:,.1f} MB"


@contextlib.contextmanager
def room_for(
    folder: Path, what: str, needed_bytes: int | Callable[[], int | None] | None = None, setting: str = "FT_WORK_DIR"
) -> Iterator[None]:
    """Turn a full disk while `what` writes under `folder` (a folder of `setting`) into DiskFull.
    `needed_bytes` is the size of what is being written, if known (a callable is asked only then)."""
    try:
        yield
    except DiskFull:
        raise
    except Exception as exc:
        if not is_disk_full(exc, folder):
            raise
        needed = None
        if callable(needed_bytes):
            with contextlib.suppress(Exception):  # best effort: the message matters more than the figure
                needed = needed_bytes()
        else:
            needed = needed_bytes
        size = "its size is unknown" if needed is None else f"it needs {megabytes(needed)}"
        raise DiskFull(
            f"No space left on the disk of {folder} ({setting}) while {what}: {size}, {megabytes(free_bytes(folder))} "
            f"is free. Give the job a larger disk (or point {setting} at a folder on one) and run it again; a retry "
            "on the same disk fails the same way.",
            folder,
            needed,
        ) from exc


def tree_bytes(folder: Path, pattern: str = "*") -> int:
    """The size of the files under `folder` (those whose name matches `pattern`)."""
    return sum(p.stat().st_size for p in folder.rglob(pattern) if p.is_file() and not p.is_symlink())


def largest_checkpoint_bytes(folder: Path, pattern: str = "*") -> int | None:
    """The size of the largest `checkpoint-*` folder under `folder` (of its files matching
    `pattern`, e.g. the model's `*.safetensors`): about what the next save needs."""
    sizes = [tree_bytes(p, pattern) for p in folder.glob("checkpoint-*") if p.is_dir()]
    return max(sizes) if sizes else None


def source_bytes(uris: Iterable[str | None]) -> int:
    """The size of what the job reads from `uris` (S3 objects or prefixes, local files or folders),
    which downloads and the data cache write again under FT_WORK_DIR."""
    total = 0
    for uri in uris:
        if not uri:
            continue
        if storage.is_s3(uri):
            bucket, key = storage.split_s3(uri)
            parent, _, name = key.rstrip("/").rpartition("/")
            store = storage.S3Store(f"s3://{bucket}/{parent}/" if parent else f"s3://{bucket}/")
            total += sum(store.list(name).values())
        else:
            path = Path(uri).expanduser()
            total += path.stat().st_size if path.is_file() else tree_bytes(path)
    return total
