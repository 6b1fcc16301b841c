"""FT_TASK=masked-lm end to end: the tiny BERT continues pre-training on the SST-2 texts through the
moto S3 server; perplexity is reported; a SIGTERM-interrupted, resumed run ends with the same
weights as an uninterrupted one (the masks are random: this checks they are drawn alike)."""

import json
import math

import pytest

from tests.integration.conftest import assert_same_weights, final_weights, settings
from tests.support import jobs

pytestmark = pytest.mark.integration

# 320 texts / batch 8 = 40 steps per epoch, 2 epochs.
MLM = {"task": "masked-lm", "num_train_epochs": "2", "per_device_train_batch_size": "8", "mlm_probability": "0.2"}


def test_masked_lm_reports_perplexity_and_resumes_bitwise_identically(aws_env, bucket, job_inputs, tmp_path):
    rc, out = jobs.run(
        jobs.child_env(aws_env, **settings(job_inputs, bucket, "straight", tmp_path, **MLM, **jobs.STOPPABLE)), tmp_path
    )
    assert rc == 0, out[-3000:]
    metrics = json.loads(jobs.s3_bytes(bucket, "runs/straight/metrics.json"))
    assert metrics["global_step"] == 80
    assert metrics["eval_perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]))
    assert 1 < metrics["eval_perplexity"] < 600  # below the vocabulary size: it learned something
    assert f"eval_perplexity={metrics['eval_perplexity']:.6g}" in out  # the [metrics] line SageMaker reads

    env = jobs.child_env(aws_env, **settings(job_inputs, bucket, "interrupted", tmp_path, **MLM, **jobs.STOPPABLE))
    stopped, out = jobs.stop_and_resume(env, tmp_path)
    assert 30 <= stopped < 80
    resumed = json.loads(jobs.s3_bytes(bucket, "runs/interrupted/metrics.json"))
    assert resumed["resumed_from_step"] == stopped and resumed["global_step"] == 80
    # Same weights; and the same evaluation, whose masks are drawn from the restored RNG too.
    assert_same_weights(final_weights(bucket, "straight"), final_weights(bucket, "interrupted"))
    assert resumed["eval_loss"] == metrics["eval_loss"]


def test_masked_lm_needs_the_text_column(aws_env, bucket, job_inputs, tmp_path):
    env = jobs.child_env(aws_env, **settings(job_inputs, bucket, "col", tmp_path, **MLM, text_column="sentence"))
    rc, out = jobs.run(env, tmp_path)
    assert rc == 64 and "no column 'sentence' (from FT_TEXT_COLUMN)" in out and "Traceback" not in out
