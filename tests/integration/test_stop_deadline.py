"""A stop whose checkpoint cannot be durable before the platform's kill: over a slow link to S3 (the
fault proxy, throttled), a checkpoint takes longer to upload than the stop leaves. The job must not
start an upload that would be cut off: it exits 143 within the deadline, with the previous
checkpoint complete, no trace of the doomed one, and the steps it lost counted."""

import re
import time

import pytest

from tests.integration.conftest import settings
from tests.support import jobs
from tests.support.fakes import FaultProxy

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]  # ~90 s on 2 shared cores

GRACE_S = 10  # the stop checkpoint must be durable 2.5 s before the kill: 7.5 s after the stop
LINK_BYTES_PER_S = 60_000  # the tiny model's checkpoint (~600 KB): about 10 s, 12 s with the overhead


def test_a_stop_checkpoint_that_cannot_be_durable_in_time_is_skipped_and_the_job_exits_143(
    aws_env, bucket, job_inputs, moto_server, tmp_path
):
    proxy = FaultProxy(moto_server, bandwidth_bytes_per_s=LINK_BYTES_PER_S)
    run = settings(
        job_inputs,
        bucket,
        "slow-link",
        tmp_path,
        logging_steps="1",
        save_steps="50",
        num_train_epochs="1",  # 80 steps: the rerun has 30 left
        stop_grace_seconds=str(GRACE_S),
        cache_prepared_data="false",  # no upload over the slow link before training
    )
    env = jobs.child_env(aws_env, **run)
    job = jobs.Job(dict(env, AWS_ENDPOINT_URL=proxy.url), tmp_path)
    try:
        # Hold training still while checkpoint 50 crawls to S3 (its upload runs in the upload process),
        # then again once the job knows it is durable (and how slow the link is): stop it there.
        pids = job.training_pids()
        job.pause_at("[metrics] step=51 ", pids)
        jobs.wait_until(lambda: jobs.complete_steps(env) == [50], "checkpoint 50 complete in S3", 120, poll_s=0.5)
        job.resume(pids)
        job.pause_at("checkpoint 50 durable", pids, timeout_s=120)
        job.signal(jobs.SIGTERM)
        signalled = time.monotonic()
        job.resume(pids)
        rc = job.finish(120)
        took = time.monotonic() - signalled
    finally:
        proxy.close()
    out = job.output()
    assert rc == 143, out[-4000:]
    assert took < GRACE_S, f"{took:.1f} s: the platform would have killed the job"
    skipped = re.search(r"stop checkpoint at step (\d+) skipped: ~[\d.]+ MB at [\d.]+ MB/s needs ~(\d+) s", out)
    assert skipped, out[-4000:]
    stopped, needs_s = int(skipped.group(1)), int(skipped.group(2))
    assert stopped > 50 and needs_s > GRACE_S
    assert "the newest durable checkpoint is step 50" in out
    assert f"steps_lost={stopped - 50}" in out and "the stop checkpoint was skipped" in out
    assert jobs.complete_steps(env) == [50]  # the previous checkpoint, complete
    keys = jobs.s3_keys(bucket, "runs/slow-link/checkpoints/")
    assert not [k for k in keys if f"checkpoint-{stopped:09d}" in k], "the doomed checkpoint was started"
    rc, rerun = jobs.run(env, tmp_path)  # a fast link again: the restart resumes from step 50
    assert rc == 0, rerun[-3000:]
    assert "(step 50)" in rerun
