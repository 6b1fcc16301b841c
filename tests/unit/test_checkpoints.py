import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from entrypoint.durability import attempts, upload_process
from entrypoint.durability import checkpoints as ck
from entrypoint.durability import manifests as mf
from entrypoint.durability.sync import CheckpointSync
from entrypoint.errors import UserError
from entrypoint.io import storage
from entrypoint.io.storage import LocalStore, S3Store
from tests.support.fakes import FaultProxy


def listing_for(*specs):
    """specs: (name, {rel: size}, complete?) -> (listing, manifests)."""
    listing, manifests = {}, {}
    for name, files, complete in specs:
        for rel, size in files.items():
            listing[f"{name}/{rel}"] = size
        if complete is not None:
            listing[f"{name}/{mf.MANIFEST}"] = 100
            sizes = files if complete else {**files, "optimizer.pt": 999}
            manifests[name] = {"format": mf.FORMAT, "files": {rel: {"size": s} for rel, s in sizes.items()}}
    return listing, manifests


def test_newest_complete_wins_and_incomplete_newer_ones_are_skipped():
    listing, manifests = listing_for(
        ("checkpoint-000000010-g0001", {"model.safetensors": 5}, True),
        ("checkpoint-000000020-g0001", {"model.safetensors": 5}, False),  # a file missing
        ("checkpoint-000000030-g0002", {"model.safetensors": 5}, None),  # no manifest yet
    )
    found = mf.checkpoints_from(listing, manifests)
    assert [c.step for c in found] == [30, 20, 10]
    assert mf.latest_complete(found).name == "checkpoint-000000010-g0001"


def test_a_file_of_the_wrong_size_makes_a_checkpoint_incomplete():
    listing, manifests = listing_for(("checkpoint-000000010-g0001", {"a": 5}, True))
    listing["checkpoint-000000010-g0001/a"] = 4
    assert mf.latest_complete(mf.checkpoints_from(listing, manifests)) is None


def test_no_checkpoint_at_all():
    assert mf.latest_complete(mf.checkpoints_from({"_attempts/000001": 3, "other/x": 1}, {})) is None


def test_retention_keeps_newest_n_and_the_best_and_never_the_only_complete():
    specs = [(mf.store_name(step, 1), {"w": 1}, True) for step in (10, 20, 30, 40)]
    found = mf.checkpoints_from(*listing_for(*specs))
    assert [c.step for c in mf.to_delete(found, keep_last=2, best_step=None)] == [20, 10]
    assert [c.step for c in mf.to_delete(found, keep_last=2, best_step=10)] == [20]
    only = mf.checkpoints_from(
        *listing_for((mf.store_name(10, 1), {"w": 1}, True), (mf.store_name(20, 1), {"w": 1}, None))
    )
    assert mf.to_delete(only, keep_last=1, best_step=None) == []


def test_retention_removes_incomplete_leftovers_older_than_the_newest_complete():
    found = mf.checkpoints_from(
        *listing_for(
            (mf.store_name(10, 1), {"w": 1}, None),
            (mf.store_name(20, 1), {"w": 1}, True),
            (mf.store_name(30, 2), {"w": 1}, None),
        )
    )
    assert [c.step for c in mf.to_delete(found, keep_last=1, best_step=None)] == [10]


def test_nothing_is_deleted_while_nothing_is_complete():
    found = mf.checkpoints_from(*listing_for((mf.store_name(10, 1), {"w": 1}, None)))
    assert mf.to_delete(found, keep_last=1, best_step=None) == []


def make_checkpoint(folder: Path, step: int) -> Path:
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(bytes([step % 256]) * 1000)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return folder


def test_sync_uploads_with_manifest_last_and_restore_verifies(tmp_path):
    store = LocalStore(str(tmp_path / "store"))
    generation = attempts.claim_generation(store, "test")
    sync = CheckpointSync(store, tmp_path / "staging", generation, keep_last=1)
    for step in (5, 10):
        sync.submit(step, make_checkpoint(tmp_path / "trainer" / f"checkpoint-{step}", step))
        assert sync.wait(30)
    assert sync.stats.durable_step == 10
    names = {c.name for c in ck.scan(store)}
    assert names == {mf.store_name(10, generation)}  # retention kept one
    step, folder = ck.restore(store, tmp_path / "restored")
    assert step == 10 and (folder / "model.safetensors").read_bytes() == bytes([10]) * 1000


def test_restore_skips_a_corrupt_newest_checkpoint(tmp_path, caplog):
    store = LocalStore(str(tmp_path / "store"))
    sync = CheckpointSync(store, tmp_path / "staging", 1, keep_last=5)
    for step in (5, 10):
        sync.submit(step, make_checkpoint(tmp_path / "trainer" / f"checkpoint-{step}", step))
        assert sync.wait(30)
    newest = store.root / mf.store_name(10, 1) / "model.safetensors"
    newest.write_bytes(b"\xff" * 1000)  # same size, different bytes
    step, _ = ck.restore(store, tmp_path / "restored")
    assert step == 5
    assert "checksum mismatch" in caplog.text


def test_generations_are_unique_and_a_stale_attempt_is_fenced(tmp_path):
    store = LocalStore(str(tmp_path / "store"))
    first = attempts.claim_generation(store, "a")
    second = attempts.claim_generation(store, "b")
    assert (first, second) == (1, 2)
    stale = CheckpointSync(store, tmp_path / "staging", first, keep_last=1)
    stale.submit(7, make_checkpoint(tmp_path / "t" / "checkpoint-7", 7))
    assert stale.wait(30)
    assert stale.superseded and stale.stats.durable_step is None
    assert mf.latest_complete(ck.scan(store)) is None


def test_queued_checkpoints_collapse_to_the_newest(tmp_path):
    class SlowStore(LocalStore):
        def upload_file(self, path, key):
            time.sleep(0.05)
            super().upload_file(path, key)

    store = SlowStore(str(tmp_path / "store"))
    sync = CheckpointSync(store, tmp_path / "staging", 1, keep_last=10)
    for step in range(1, 6):
        sync.submit(step, make_checkpoint(tmp_path / "trainer" / f"checkpoint-{step}", step))
    assert sync.wait(30)
    steps = [c.step for c in ck.scan(store) if c.complete]
    assert steps[0] == 5 and len(steps) < 5


def test_the_upload_process_uploads_and_its_death_falls_back_to_the_thread(tmp_path):
    store = LocalStore(str(tmp_path / "store"))
    sync = CheckpointSync(store, tmp_path / "staging", 1, keep_last=1, uploader=upload_process.start())
    try:
        sync.submit(5, make_checkpoint(tmp_path / "trainer" / "checkpoint-5", 5))
        assert sync.wait(60)
        worker = sync._worker.process
        assert worker.pid != os.getpid() and worker.is_alive()
        assert sync.stats.durable_step == 5 and sync.stats.bytes > 1000 and sync.stats.durable_at is not None
        os.kill(worker.pid, signal.SIGKILL)
        worker.join(10)
        sync.submit(10, make_checkpoint(tmp_path / "trainer" / "checkpoint-10", 10))
        assert sync.wait(60)
        assert sync.stats.durable_step == 10 and sync.stats.failures == 0
        assert {c.name for c in ck.scan(store)} == {mf.store_name(10, 1)}  # retention ran, in the thread
    finally:
        sync.close()


def test_upload_process_errors_reach_the_job_which_goes_on(tmp_path, caplog, monkeypatch):
    with socket.socket() as probe:  # a port where nothing listens: S3 unreachable
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    store = S3Store("s3://bucket/run/checkpoints/")
    sync = CheckpointSync(store, tmp_path / "staging", 1, keep_last=2, uploader=upload_process.start())
    try:
        for step in (5, 10):
            sync.submit(step, make_checkpoint(tmp_path / "trainer" / f"checkpoint-{step}", step))
            assert sync.wait(60)
        assert sync.stats.failures == 2 and sync.stats.durable_step is None
        assert "upload of checkpoint 10 failed" in caplog.text and "s3://bucket/run/checkpoints/" in caplog.text
        assert sync._worker.alive and sync._worker.process.is_alive()  # a failed upload is not a dead uploader
    finally:
        sync.close()


def test_the_upload_process_ignores_ctrl_c_and_dies_with_a_killed_job_mid_upload(tmp_path):
    make_checkpoint(tmp_path / "checkpoint-5", 5)
    hang = socket.socket()  # an S3 endpoint that accepts connections and never answers: the upload hangs
    hang.bind(("127.0.0.1", 0))
    hang.listen(64)
    script = f"""
import os, sys, threading, time
from pathlib import Path
for name in [n for n in os.environ if n.startswith("AWS_ENDPOINT_URL")]:
    del os.environ[name]
os.environ.update(AWS_ENDPOINT_URL="http://127.0.0.1:{hang.getsockname()[1]}", AWS_MAX_ATTEMPTS="1",
                  AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
from entrypoint.durability import upload_process
from entrypoint.durability.checkpoints import UploadRequest
worker = upload_process.start()
request = UploadRequest("s3://bucket/ck/", 1, Path({str(tmp_path / "checkpoint-5")!r}), 5, 1, 1, None)
threading.Thread(target=worker.upload, args=(request,),
                 daemon=True).start()
print(worker.process.pid, flush=True)
time.sleep(120)
"""
    job = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        worker_pid = int(job.stdout.readline())
        deadline = time.monotonic() + 60
        while not ignores(worker_pid, signal.SIGINT) and time.monotonic() < deadline:  # past its start-up
            time.sleep(0.1)
        time.sleep(1)  # the upload is in flight (and hangs)
        assert job.poll() is None and alive(worker_pid)
        os.kill(worker_pid, signal.SIGINT)
        time.sleep(0.5)
        assert alive(worker_pid)
        job.kill()
        job.wait(10)
        deadline = time.monotonic() + 10  # botocore would wait 60 s for the hung endpoint
        while alive(worker_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(worker_pid)
    finally:
        job.kill()
        hang.close()


def ignores(pid: int, signum: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) & (1 << (signum - 1)))
    return False


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# -- a step saved twice ---------------------------------------------------------------------------


def verify_store(store) -> list[str]:
    """The files of complete checkpoints in `store` whose bytes, read back, differ from their manifest."""
    wrong = []
    for cp in ck.scan(store):
        if cp.complete:
            for rel, meta in cp.manifest["files"].items():
                data = store.read_bytes(f"{cp.name}/{rel}")
                if data is None or len(data) != meta["size"] or hashlib.sha256(data).hexdigest() != meta["sha256"]:
                    wrong.append(f"{cp.name}/{rel}")
    return wrong


def save_again(folder: Path, step: int) -> None:
    """The Trainer saving `step` again into its folder: every file written anew, in place (same
    inode, as torch.save and safetensors do), with other bytes and sizes."""
    (folder / "model.safetensors").write_bytes(b"\x02" * 1500)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "saved": "again"}))


def test_a_step_saved_twice_is_committed_once_and_what_is_durable_verifies(tmp_path):
    store = LocalStore(str(tmp_path / "store"))
    sync = CheckpointSync(store, tmp_path / "staging", 1, keep_last=2)
    folder = make_checkpoint(tmp_path / "trainer" / "checkpoint-7", 7)
    sync.submit(7, folder)
    assert sync.wait(30)
    save_again(folder, 7)
    sync.submit(7, folder)
    assert sync.wait(30)
    assert sync.stats.durable_step == 7 and sync.stats.failures == 0
    newest = mf.latest_complete(ck.scan(store))
    assert newest is not None and newest.step == 7
    assert verify_store(store) == []


def test_a_second_save_of_a_step_during_the_first_upload_leaves_a_consistent_checkpoint(tmp_path):
    in_flight = threading.Event()

    class SlowStore(LocalStore):
        def upload_file(self, path, key):
            in_flight.set()
            time.sleep(0.3)
            super().upload_file(path, key)

    store = SlowStore(str(tmp_path / "store"))
    sync = CheckpointSync(store, tmp_path / "staging", 1, keep_last=2)
    folder = make_checkpoint(tmp_path / "trainer" / "checkpoint-7", 7)
    sync.submit(7, folder)
    assert in_flight.wait(30)
    save_again(folder, 7)  # while the first save of step 7 uploads
    sync.submit(7, folder)
    assert sync.wait(60)
    newest = mf.latest_complete(ck.scan(store))
    assert sync.stats.durable_step == 7 and newest is not None and newest.step == 7
    assert verify_store(store) == []


def test_a_file_rewritten_while_it_uploads_is_never_committed(tmp_path):
    rewritten = []

    class RewritingStore(LocalStore):  # the file changes between its hash and its upload
        def upload_file(self, path, key):
            if key.endswith("model.safetensors") and not rewritten:
                rewritten.append(key)
                path.write_bytes(b"\x09" * path.stat().st_size)  # same size, same inode: other bytes
            super().upload_file(path, key)

    folder = make_checkpoint(tmp_path / "trainer" / "checkpoint-7", 7)
    os.utime(folder / "model.safetensors", ns=(0, 0))  # written long ago: writing it now shows
    store = RewritingStore(str(tmp_path / "store"))
    sync = CheckpointSync(store, tmp_path / "staging", 1, keep_last=2)
    sync.submit(7, folder)
    assert sync.wait(30)
    assert rewritten and sync.stats.durable_step is None and sync.stats.failures == 1
    assert mf.latest_complete(ck.scan(store)) is None and verify_store(store) == []


def test_a_manifest_committed_meanwhile_with_other_files_is_not_reported_durable(tmp_path, caplog):
    class RacingStore(LocalStore):  # another upload of the same checkpoint commits first
        def write_bytes(self, key, data, if_absent=False):
            if key.endswith(mf.MANIFEST) and if_absent:
                other = dict(json.loads(data), files={"model.safetensors": {"size": 1000, "sha256": "0" * 64}})
                super().write_bytes(key, json.dumps(other).encode(), if_absent=True)
            return super().write_bytes(key, data, if_absent)

    store = RacingStore(str(tmp_path / "store"))
    sync = CheckpointSync(store, tmp_path / "staging", 1, keep_last=2)
    sync.submit(7, make_checkpoint(tmp_path / "trainer" / "checkpoint-7", 7))
    assert sync.wait(30)
    assert sync.stats.durable_step is None and sync.stats.failures == 1
    assert "committed meanwhile with other files" in caplog.text


# -- stale attempts and retention -------------------------------------------------------------------


def test_retention_never_deletes_a_newer_attempts_checkpoints():
    specs = [(mf.store_name(step, gen), {"w": 1}, True) for step, gen in ((80, 1), (70, 1), (60, 2), (50, 2))]
    found = mf.checkpoints_from(*listing_for(*specs))
    assert [c.name for c in mf.to_delete(found, keep_last=1, best_step=None)] == [
        mf.store_name(70, 1),
        mf.store_name(60, 2),
        mf.store_name(50, 2),
    ]
    assert [c.name for c in mf.to_delete(found, keep_last=1, best_step=None, generation=1)] == [mf.store_name(70, 1)]


def test_a_stale_attempt_that_commits_as_a_newer_one_starts_deletes_nothing_of_it(tmp_path):
    root = tmp_path / "store"
    newer = LocalStore(str(root))

    class StaleStore(LocalStore):  # attempt 1, committing step 80 while attempt 2 starts and saves step 60
        def write_bytes(self, key, data, if_absent=False):
            written = super().write_bytes(key, data, if_absent)
            if key == f"{mf.store_name(80, 1)}/{mf.MANIFEST}":
                assert attempts.claim_generation(newer, "newer") == 2
                folder = make_checkpoint(tmp_path / "newer" / "checkpoint-60", 60)
                ck.upload_checkpoint(newer, ck.UploadRequest(newer.uri, 2, folder, 60, 2, 5, None), {})
            return written

    stale = StaleStore(str(root))
    assert attempts.claim_generation(stale, "stale") == 1
    older = make_checkpoint(tmp_path / "stale" / "checkpoint-40", 40)
    ck.upload_checkpoint(newer, ck.UploadRequest(newer.uri, 2, older, 40, 1, 5, None), {})
    folder = make_checkpoint(tmp_path / "stale" / "checkpoint-80", 80)
    done = ck.upload_checkpoint(stale, ck.UploadRequest(stale.uri, 2, folder, 80, 1, 1, None), {})
    assert done.superseded and done.removed == ()
    complete = {c.name for c in ck.scan(newer) if c.complete}
    assert complete == {mf.store_name(80, 1), mf.store_name(60, 2), mf.store_name(40, 1)}


def test_restore_skips_a_checkpoint_deleted_while_it_downloads(bucket, tmp_path, caplog):
    deleted = []

    class RetentionMeanwhile(S3Store):  # another attempt's retention deletes the newest checkpoint mid-restore
        def download_file(self, key, path):
            if key.startswith(mf.store_name(10, 1)) and not deleted:
                listing = self.list(mf.store_name(10, 1) + "/")
                self.delete(sorted(listing, key=lambda k: not k.endswith(mf.MANIFEST)))
                deleted.extend(listing)
            super().download_file(key, path)

    store = RetentionMeanwhile(f"s3://{bucket}/run/checkpoints/")
    sync = CheckpointSync(store, tmp_path / "staging", 1, keep_last=5)
    for step in (5, 10):
        sync.submit(step, make_checkpoint(tmp_path / "trainer" / f"checkpoint-{step}", step))
        assert sync.wait(60)
    step, folder = ck.restore(store, tmp_path / "restored")
    assert deleted and step == 5 and (folder / "model.safetensors").read_bytes() == bytes([5]) * 1000
    assert "deleted while it was being downloaded" in caplog.text


def test_restore_onto_a_full_disk_is_the_users_error_naming_the_folder_and_the_size(tmp_path):
    class FullDisk(LocalStore):  # every download lands on a disk without room (the kernel's /dev/full)
        def download_file(self, key, path):
            with storage.s3_errors(self.uri + key, "download"), open("/dev/full", "wb") as sink:
                sink.write((self.root / key).read_bytes())

    store = FullDisk(str(tmp_path / "store"))
    sync = CheckpointSync(store, tmp_path / "staging", 1, keep_last=5)
    folder = make_checkpoint(tmp_path / "trainer" / "checkpoint-5", 5)
    (folder / "optimizer.pt").write_bytes(b"\0" * 3_000_000)
    sync.submit(5, folder)
    assert sync.wait(30)
    with pytest.raises(UserError) as raised:
        ck.restore(store, tmp_path / "work" / "checkpoints")
    message = str(raised.value)
    assert raised.value.exit_code == 64 and "No space left" in message and "FT_WORK_DIR" in message
    assert str(tmp_path / "work" / "checkpoints") in message and "it needs 3.0 MB" in message


# -- stalled uploads --------------------------------------------------------------------------------


@pytest.fixture
def stalled_s3(bucket, moto_server, monkeypatch):
    """S3 through a proxy that never answers requests for checkpoint 10 (a stalled S3)."""
    proxy = FaultProxy(moto_server, stall_paths=(mf.store_name(10, 1),))
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    yield S3Store(f"s3://{bucket}/run/checkpoints/")
    proxy.close()


@pytest.mark.timeout(120)
def test_the_end_of_training_waits_for_a_stalled_upload_only_until_its_deadline(stalled_s3, tmp_path):
    sync = CheckpointSync(stalled_s3, tmp_path / "staging", 1, keep_last=2, uploader=upload_process.start())
    try:
        sync.submit(5, make_checkpoint(tmp_path / "trainer" / "checkpoint-5", 5))
        assert sync.wait(60) and sync.stats.durable_step == 5
        sync.submit(10, make_checkpoint(tmp_path / "trainer" / "checkpoint-10", 10))
        started = time.monotonic()
        assert not sync.drain(lambda: started + 3)
        assert time.monotonic() - started < 20
        assert not sync._worker.process.is_alive()  # the stalled upload was stopped with it
        error = sync.unfinished("within 3 s (FT_UPLOAD_TIMEOUT_SECONDS)")
        assert error.exit_code == 75 and "did not finish within 3 s" in str(error)
        assert "the newest durable checkpoint of this attempt is step 5" in str(error)
    finally:
        sync.close()


@pytest.mark.timeout(120)
def test_an_upload_stalled_past_its_timeout_fails_and_the_next_one_is_tried(stalled_s3, tmp_path, caplog):
    sync = CheckpointSync(
        stalled_s3, tmp_path / "staging", 1, keep_last=2, uploader=upload_process.start(), upload_timeout_s=2
    )
    try:
        sync.submit(10, make_checkpoint(tmp_path / "trainer" / "checkpoint-10", 10))
        assert sync.wait(30)
        assert sync.stats.failures == 1 and "did not finish within 2 s" in caplog.text
        sync.submit(15, make_checkpoint(tmp_path / "trainer" / "checkpoint-15", 15))
        assert sync.wait(30)
        assert sync.stats.durable_step == 15
    finally:
        sync.close()
