"""The Trainer workflow's knobs through settings, end to end: evaluation and saving by steps,
best-model tracking with S3 retention keeping the best, early stopping, gradient accumulation and
checkpointing, adafactor, a cosine schedule with warmup, TensorBoard event files synced to S3."""

import json

import pytest

from entrypoint.durability import checkpoints as ck
from entrypoint.io.storage import S3Store
from tests.integration.conftest import settings
from tests.support import jobs

pytestmark = pytest.mark.integration


def test_workflow_knobs_and_best_checkpoint_retention(aws_env, bucket, job_inputs, tmp_path):
    extra = dict(
        eval_strategy="steps",
        eval_steps="10",
        save_steps="10",
        load_best_model_at_end="true",
        early_stopping_patience="3",
        report_to="tensorboard",
        gradient_accumulation_steps="2",
        gradient_checkpointing="true",
        optim="adafactor",
        lr_scheduler_type="cosine",
        warmup_steps="0.1",
        checkpoint_keep_last="1",
        learning_rate="3e-3",
    )
    rc, out = jobs.run(jobs.child_env(aws_env, **settings(job_inputs, bucket, "knobs", tmp_path, **extra)), tmp_path)
    assert rc == 0, out[-3000:]
    keys = jobs.s3_keys(bucket, "runs/knobs/")
    assert any(k.startswith("runs/knobs/tensorboard/") and "events.out.tfevents" in k for k in keys), sorted(keys)[:20]
    metrics = json.loads(jobs.s3_bytes(bucket, "runs/knobs/metrics.json"))
    assert "eval_accuracy" in metrics

    complete = [c for c in ck.scan(S3Store(f"s3://{bucket}/runs/knobs/checkpoints/")) if c.complete]
    newest = complete[0]
    state = json.loads(jobs.s3_bytes(bucket, f"runs/knobs/checkpoints/{newest.name}/trainer_state.json"))
    best_step = int(state["best_model_checkpoint"].rsplit("-", 1)[1])
    assert {c.step for c in complete} == {newest.step, best_step}  # keep_last=1, plus the best
    assert metrics["global_step"] == newest.step
    assert metrics["global_step"] <= 120  # 320 rows / (4 × 2 accumulation) × 3 epochs; early stopping may cut it
