"""Training batches grouped by length (the classification default) resume exactly: a job stopped in
the middle of its second epoch and resumed ends with the weights of an uninterrupted run."""

import pytest

from entrypoint.tasks.lengths import GROUPED_MESSAGE
from tests.integration.conftest import assert_same_weights, final_weights, settings
from tests.support import jobs

pytestmark = pytest.mark.integration


def test_grouped_batches_resumed_in_the_second_epoch_give_bitwise_equal_weights(aws_env, bucket, job_inputs, tmp_path):
    # 80 steps per epoch (320 rows, batch 4): the stop lands in epoch 2, whose order a fresh
    # process's global RNG would not reproduce.
    rc, out = jobs.run(
        jobs.child_env(aws_env, **settings(job_inputs, bucket, "straight", tmp_path, **jobs.STOPPABLE)), tmp_path
    )
    assert rc == 0, out[-3000:]
    assert GROUPED_MESSAGE in out

    env = jobs.child_env(aws_env, **settings(job_inputs, bucket, "resumed", tmp_path, **jobs.STOPPABLE))
    stopped, _ = jobs.stop_and_resume(env, tmp_path, after="[metrics] step=100 ")
    assert 80 < stopped < 160
    assert_same_weights(final_weights(bucket, "straight"), final_weights(bucket, "resumed"))
