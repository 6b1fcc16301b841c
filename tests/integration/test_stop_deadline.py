"""A stop whose checkpoint cannot be durable before the platform's kill: over a slow link to S3 (the
fault proxy, throttled), a checkpoint takes longer to upload than the stop leaves. The job must not
start an upload that would be cut off: it exits 143 within the deadline, with the previous
checkpoint complete, no trace of the doomed one, and the steps it lost counted."""

import dataclasses
import re
import time

import pytest

from tests.integration.conftest import settings
from tests.support import jobs
from tests.support.fakes import FaultProxy

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]  # ~2.5 min on 2 shared cores

GRACE_S = 10  # the stop checkpoint must be durable 2.5 s before the kill: 7.5 s after the stop


@dataclasses.dataclass(frozen=True)
class Case:
    model: str | None  # the fixture with the model's S3 URI; None: job_inputs' tiny one
    link_bytes_per_s: int
    saved: int  # the step of the one checkpoint uploaded before the stop
    checkpoint_mb: float
    extra: dict[str, str]


CASES = {
    # The tiny model's checkpoint (~0.6 MB) at 60 KB/s: about 10 s, 12 s with the overhead. ~45 s.
    "tiny": Case(None, 60_000, 50, 0.59, {"num_train_epochs": "1"}),  # 80 steps: the rerun has 30 left
    # A ~22M-parameter BERT's (~270 MB: 90 MB of weights, 180 MB of optimizer state) at 20 MB/s: 18-21 s
    # (~15 MB/s measured, with S3's own time), ~20 s by the plan. ~80 s, building the model included.
    "270MB": Case("bert_22m_model", 20_000_000, 5, 269, {"max_steps": "9", "max_length": "32"}),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_a_stop_checkpoint_that_cannot_be_durable_in_time_is_skipped_and_the_job_exits_143(
    case, aws_env, bucket, job_inputs, moto_server, tmp_path, request
):
    inputs = dict(job_inputs, model=request.getfixturevalue(case.model)) if case.model else job_inputs
    saved = case.saved
    proxy = FaultProxy(moto_server, bandwidth_bytes_per_s=case.link_bytes_per_s)
    run = settings(
        inputs,
        bucket,
        "slow-link",
        tmp_path,
        logging_steps="1",
        save_steps=str(saved),
        stop_grace_seconds=str(GRACE_S),
        cache_prepared_data="false",  # no upload over the slow link before training
        **case.extra,
    )
    env = jobs.child_env(aws_env, **run)
    job = jobs.Job(dict(env, AWS_ENDPOINT_URL=proxy.url), tmp_path)
    try:
        # Hold training still while the checkpoint crawls to S3 (its upload runs in the upload process),
        # then again once the job knows it is durable (and how slow the link is): stop it there.
        pids = job.training_pids()
        job.pause_at(f"[metrics] step={saved + 1} ", pids)
        jobs.wait_until(
            lambda: jobs.complete_steps(env) == [saved], f"checkpoint {saved} complete in S3", 120, poll_s=0.5
        )
        job.resume(pids)
        job.pause_at(f"checkpoint {saved} durable", pids, timeout_s=120)
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
    skipped = re.search(r"stop checkpoint at step (\d+) skipped: ~([\d.]+) MB at [\d.]+ MB/s needs ~(\d+) s", out)
    assert skipped, out[-4000:]
    stopped, mb, needs_s = int(skipped.group(1)), float(skipped.group(2)), int(skipped.group(3))
    assert stopped > saved and needs_s > GRACE_S
    assert 0.9 < mb / case.checkpoint_mb < 1.1, f"a checkpoint of {mb} MB, not ~{case.checkpoint_mb} MB"
    assert f"the newest durable checkpoint is step {saved}" in out
    assert f"steps_lost={stopped - saved}" in out and "the stop checkpoint was skipped" in out
    assert jobs.complete_steps(env) == [saved]  # the previous checkpoint, complete
    keys = jobs.s3_keys(bucket, "runs/slow-link/checkpoints/")
    assert not [k for k in keys if f"checkpoint-{stopped:09d}" in k], "the doomed checkpoint was started"
    rc, rerun = jobs.run(env, tmp_path)  # a fast link again: the restart resumes from the saved step
    assert rc == 0, rerun[-3000:]
    assert f"(step {saved})" in rerun
