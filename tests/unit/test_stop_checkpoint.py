"""The main process's plan for a stop checkpoint (interruption.StopCheckpointPlan) and its one
effect on the uploads: abandoning the one in flight (CheckpointSync.cancel_in_flight)."""

import logging
import time
from types import SimpleNamespace

from entrypoint.durability import checkpoints as ck
from entrypoint.durability import interruption, upload_process
from entrypoint.durability import manifests as mf
from entrypoint.durability.sync import CheckpointSync, SyncStats
from entrypoint.io.storage import S3Store
from tests.support import jobs
from tests.support.fakes import FaultProxy

MB = 1_000_000


class FakeSync:
    """What the plan reads of a CheckpointSync (its stats), and the cancel it may ask for."""

    def __init__(self, **stats):
        self.stats = SyncStats(**stats)
        self.cancelled = 0

    def cancel_in_flight(self) -> bool:
        self.cancelled += 1
        return True


def test_the_plan_skips_a_doomed_stop_checkpoint_and_says_why(caplog):
    # Two 270 MB checkpoints uploaded at 10 MB/s; the stop must be durable 15 s from now.
    sync = FakeSync(uploads=2, bytes=540 * MB, seconds=54.0, durable_step=50)
    plan = interruption.StopCheckpointPlan(sync, lambda: time.monotonic() + 15)
    with caplog.at_level(logging.WARNING):
        decision = plan(80)
    assert not decision.save and sync.cancelled == 0
    message = caplog.text
    assert "stop checkpoint at step 80 skipped: ~270 MB at 10 MB/s needs ~29 s, the deadline is in 15 s" in message
    assert "the newest durable checkpoint is step 50" in message and "FT_STOP_CHECKPOINT=always" in message


def test_before_any_upload_the_assumed_rate_and_a_restored_checkpoints_size_are_used(caplog):
    sync = FakeSync()
    tried = interruption.StopCheckpointPlan(sync, lambda: time.monotonic() + 15, None, lambda: 270 * MB)
    assert tried(5).save  # no rate measured or assumed: tried, as before
    assumed = interruption.StopCheckpointPlan(sync, lambda: time.monotonic() + 15, 10.0, lambda: 270 * MB)
    with caplog.at_level(logging.WARNING):
        assert not assumed(5).save
    assert "none of this attempt's" in caplog.text


def test_the_plan_abandons_the_upload_in_flight_when_the_stop_checkpoint_needs_its_time(caplog):
    # 27 MB at 10 MB/s: ~5 s each. The one in flight began just now; 8 s are left: one fits, not both.
    sync = FakeSync(uploads=1, bytes=27 * MB, seconds=2.7, in_flight_step=60, in_flight_since=time.monotonic())
    with caplog.at_level(logging.WARNING):
        decision = interruption.StopCheckpointPlan(sync, lambda: time.monotonic() + 8)(70)
    assert decision.save and decision.cancel_in_flight and sync.cancelled == 1
    assert "upload of checkpoint 60 abandoned for the stop checkpoint at step 70" in caplog.text
    sync = FakeSync(uploads=1, bytes=27 * MB, seconds=2.7, in_flight_step=60, in_flight_since=time.monotonic())
    decision = interruption.StopCheckpointPlan(sync, lambda: time.monotonic() + 60)(70)
    assert decision.save and not decision.cancel_in_flight and sync.cancelled == 0  # both make it


def checkpoint(folder, step: int, size: int):
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(bytes([step % 256]) * size)
    (folder / "trainer_state.json").write_text(f'{{"global_step": {step}}}')
    return folder


def test_an_abandoned_upload_is_never_committed_and_the_newer_one_is(aws_env, bucket, monkeypatch, tmp_path, caplog):
    proxy = FaultProxy(aws_env["AWS_ENDPOINT_URL"], bandwidth_bytes_per_s=500_000)  # 4 MB: about 8 s
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)  # the upload process (spawned) reads it
    store = S3Store(f"s3://{bucket}/run/checkpoints/")
    sync = CheckpointSync(store, tmp_path / "staging", 1, keep_last=2, uploader=upload_process.start())
    try:
        sync.submit(10, checkpoint(tmp_path / "trainer" / "checkpoint-10", 10, 4 * MB))
        jobs.wait_until(lambda: sync.stats.in_flight_step == 10, "the upload of checkpoint 10", 30)
        jobs.wait_until(lambda: proxy.throttled_bytes > MB, "a quarter of the checkpoint sent", 30)
        with caplog.at_level(logging.WARNING):
            started = time.monotonic()
            assert sync.cancel_in_flight()  # while checkpoint 10 is still far from done
            assert time.monotonic() - started < 5  # the upload process notices within its poll interval
            jobs.wait_until(lambda: sync.stats.in_flight_step is None, "the abandoned upload to end", 10)
            proxy.bandwidth_bytes_per_s = None  # the stop checkpoint's upload goes at full speed
            sync.submit(20, checkpoint(tmp_path / "trainer" / "checkpoint-20", 20, 1000))
            assert sync.wait(60)
        assert sync.stats.durable_step == 20 and sync.stats.failures == 0
        assert "upload of checkpoint 10 abandoned for a newer one" in caplog.text
        found = {c.step: c.complete for c in ck.scan(store)}
        assert found.get(20) is True and not found.get(10)  # 10: no manifest, never loaded
        assert mf.latest_complete(ck.scan(store)).step == 20
        assert not sync.cancel_in_flight()  # nothing in flight any more
    finally:
        sync.close()
        proxy.close()


def test_nothing_in_flight_is_nothing_to_abandon(tmp_path):
    sync = CheckpointSync(SimpleNamespace(uri="unused"), tmp_path / "staging", 1, keep_last=1)
    try:
        assert not sync.cancel_in_flight() and sync.stats.in_flight_step is None
    finally:
        sync.close()
