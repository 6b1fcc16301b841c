"""A full local disk is the user's error (io/disk.py): exit 64 naming the folder and the size."""

import errno

import pytest

from entrypoint.errors import UserError, WorldError
from entrypoint.io import disk, storage

# What torch.save raises on a full disk: its errno is lost (seen writing to /dev/full).
TORCH_WRITE_FAILED = "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"


def fill(data: bytes) -> None:
    """A write the kernel refuses for want of space: /dev/full answers every write with ENOSPC."""
    with open("/dev/full", "wb") as sink:
        sink.write(data)


def test_a_write_to_a_full_disk_is_a_user_error_naming_the_folder_the_setting_and_the_size(tmp_path):
    with pytest.raises(UserError) as raised, disk.room_for(tmp_path, "downloading the model", lambda: 3_000_000):
        fill(b"x" * 10_000)
    error = raised.value
    assert isinstance(error, disk.DiskFull) and error.exit_code == 64 and error.needed_bytes == 3_000_000
    message = str(error)
    assert f"No space left on the disk of {tmp_path} (FT_WORK_DIR) while downloading the model" in message
    assert "it needs 3.0 MB" in message and "is free" in message


def test_a_download_that_fills_the_disk_is_not_the_worlds_error(tmp_path):
    # storage turns any OSError of a transfer into WorldError (75, retried): the disk's is not
    with (
        pytest.raises(UserError) as raised,
        disk.room_for(tmp_path, "downloading checkpoint c"),
        storage.s3_errors("s3://bucket/c/model.safetensors", "download"),
    ):
        fill(b"x" * 10_000)
    assert raised.value.exit_code == 64 and isinstance(raised.value.__cause__, WorldError)
    assert "its size is unknown" in str(raised.value)


def test_other_errors_pass_through_unchanged(tmp_path):
    with pytest.raises(WorldError), disk.room_for(tmp_path, "downloading"):
        raise WorldError("Cannot download s3://b/k: connection reset")
    with pytest.raises(PermissionError), disk.room_for(tmp_path, "saving"):
        raise PermissionError(errno.EACCES, "Permission denied")


def test_torchs_write_failure_counts_as_a_full_disk_only_when_the_disk_is_nearly_full(tmp_path):
    error = RuntimeError(TORCH_WRITE_FAILED)
    assert disk.is_disk_full(error, tmp_path, free=lambda folder: 1024)
    assert not disk.is_disk_full(error, tmp_path, free=lambda folder: 50 * 10**9)
    assert disk.is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"), tmp_path)
    assert disk.is_disk_full(RuntimeError("IoError(Os { code: 28, kind: StorageFull })"), tmp_path)


def test_the_size_of_what_a_save_needs_is_the_largest_checkpoint(tmp_path):
    for step, size in ((10, 3000), (20, 5000)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"w" * size)
        (folder / "optimizer.pt").write_bytes(b"o" * 2 * size)
    assert disk.largest_checkpoint_bytes(tmp_path) == 15000
    assert disk.largest_checkpoint_bytes(tmp_path, "*.safetensors") == 5000
    assert disk.largest_checkpoint_bytes(tmp_path / "none") is None
