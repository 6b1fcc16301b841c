"""A stalled S3 (it accepts requests and never answers) at the worst moment: the upload of the
stop checkpoint. The job must end before the platform's kill, exit 75 (retried), and say which
checkpoint is durable, instead of hanging until SIGKILL."""

import time

import pytest

from tests.integration.conftest import settings
from tests.support import jobs
from tests.support.fakes import FaultProxy

pytestmark = pytest.mark.integration

GRACE_S = 30


def test_a_stop_whose_checkpoint_upload_stalls_exits_75_before_the_kill(
    aws_env, bucket, job_inputs, moto_server, tmp_path
):
    proxy = FaultProxy(moto_server, stall_paths=("/checkpoint-0",))  # every checkpoint file: no answer
    run = settings(job_inputs, bucket, "stalled", tmp_path, **jobs.STOPPABLE, stop_grace_seconds=str(GRACE_S))
    job = jobs.Job(jobs.child_env(dict(aws_env, AWS_ENDPOINT_URL=proxy.url), **run), tmp_path)
    try:
        job.wait_for("[metrics] step=10 ")
        signalled = time.monotonic()
        job.signal(jobs.SIGTERM)
        rc = job.finish(120)
        took = time.monotonic() - signalled
    finally:
        proxy.close()
    out = job.output()
    assert rc == 75, out[-4000:]
    assert took < GRACE_S, f"{took:.1f} s: the platform would have killed the job"
    assert "did not finish before the platform's kill after the stop (30 s after the stop request" in out
    assert "no checkpoint of this attempt is durable" in out and "steps_lost=" in out
