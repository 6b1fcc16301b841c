import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from entrypoint.durability import attempts, upload_process
from entrypoint.durability import checkpoints as ck
from entrypoint.durability import manifests as mf
from entrypoint.durability.sync import CheckpointSync
from entrypoint.io.storage import LocalStore, S3Store


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
