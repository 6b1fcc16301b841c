"""The Trainer workflow's knobs through settings, end to end: evaluation and saving by steps,
best-model tracking with S3 retention keeping the best, early stopping, gradient accumulation and
checkpointing, adafactor, a cosine schedule with warmup, TensorBoard event files synced to S3.
The data is made easy (each review starts with its verdict), so the model must learn it: the
published model, loaded from S3 with transformers alone, beats the majority class on held-out rows;
and the step counts, learning rates and early-stopping point in trainer_state.json are the ones
the settings imply."""

import json
import math

import boto3
import pytest

from entrypoint.durability import checkpoints as ck
from entrypoint.io.storage import S3Store
from tests.integration.conftest import settings
from tests.support import jobs, tiny

pytestmark = pytest.mark.integration

ROWS, EVAL_ROWS = 320, 80
BATCH, ACCUMULATION, EPOCHS = 4, 2, 3
LEARNING_RATE, WARMUP, PATIENCE, EVAL_STEPS = 3e-3, 0.1, 3, 10


def easy(rows: list[dict]) -> list[dict]:
    """The fixture's SST-2 rows with their verdict as the first words: separable by the first token.
    Said three times, the tiny model learns it in about 20 steps, well before early stopping (3
    evaluations without progress, from step 40 on) could end the training."""
    return [dict(r, text=f"{'great great great' if r['label'] == '1' else 'bad bad bad'} . {r['text']}") for r in rows]


def expected_learning_rate(step: int, total: int) -> float:
    """transformers' cosine schedule with warmup (a warmup below 1 is a fraction of the steps)."""
    warmup = math.ceil(WARMUP * total)
    if step < warmup:
        return LEARNING_RATE * step / warmup
    progress = (step - warmup) / (total - warmup)
    return LEARNING_RATE * max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def early_stop(evaluations: list[tuple[int, float]], patience: int) -> tuple[int | None, int, float]:
    """EarlyStoppingCallback's rule over (step, accuracy) evaluations: (the step training stops
    at, or None; the best step; the best accuracy)."""
    best_step, best, worse = 0, -math.inf, 0
    for step, accuracy in evaluations:
        if accuracy > best:
            best_step, best, worse = step, accuracy, 0
        else:
            worse += 1
            if worse >= patience:
                return step, best_step, best
    return None, best_step, best


def published_accuracy(bucket: str, prefix: str, rows: list[dict], folder) -> float:
    """The accuracy on `rows` of the model published under `prefix`, loaded as users load it."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    for key in jobs.s3_keys(bucket, prefix):
        rel = key[len(prefix) :]
        if not rel.startswith(("checkpoints/", "tensorboard/")):
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_bytes(jobs.s3_bytes(bucket, key))
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    batch = tokenizer([r["text"] for r in rows], padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        predicted = model(**batch).logits.argmax(-1).tolist()
    labels = [model.config.id2label[i] for i in predicted]
    return sum(label == r["label"] for label, r in zip(labels, rows, strict=True)) / len(rows)


def test_workflow_knobs_and_best_checkpoint_retention(aws_env, bucket, job_inputs, tmp_path):
    rows = easy(tiny.sst2_rows("train", ROWS + EVAL_ROWS))
    train_rows, eval_rows = rows[:ROWS], rows[ROWS:]
    tiny.write_csv(tmp_path / "easy-train.csv", train_rows)
    tiny.write_csv(tmp_path / "easy-eval.csv", eval_rows)
    s3 = boto3.client("s3")
    s3.upload_file(str(tmp_path / "easy-train.csv"), bucket, "data/easy-train.csv")
    s3.upload_file(str(tmp_path / "easy-eval.csv"), bucket, "data/easy-eval.csv")
    extra = dict(
        train_data=f"s3://{bucket}/data/easy-train.csv",
        eval_data=f"s3://{bucket}/data/easy-eval.csv",
        per_device_train_batch_size=str(BATCH),
        num_train_epochs=str(EPOCHS),
        eval_strategy="steps",
        eval_steps=str(EVAL_STEPS),
        save_steps="10",
        load_best_model_at_end="true",
        early_stopping_patience=str(PATIENCE),
        report_to="tensorboard",
        gradient_accumulation_steps=str(ACCUMULATION),
        gradient_checkpointing="true",
        optim="adafactor",
        lr_scheduler_type="cosine",
        warmup_steps=str(WARMUP),
        checkpoint_keep_last="1",
        learning_rate=str(LEARNING_RATE),
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

    # The counts the settings imply: 80 batches of 4 per epoch, an optimizer step every 2 batches.
    total = math.ceil(ROWS / BATCH) // ACCUMULATION * EPOCHS
    assert total == 120 and state["max_steps"] == total and state["num_train_epochs"] == EPOCHS
    assert state["train_batch_size"] == BATCH and state["eval_steps"] == EVAL_STEPS
    # The learning rate of every logged step on the cosine curve, warmup (12 steps) included: step N
    # (counted from 1) ran with the schedule's value after N - 1 scheduler steps.
    logged = [(e["step"], e["learning_rate"]) for e in state["log_history"] if "learning_rate" in e]
    assert [s for s, _ in logged] == list(range(5, state["global_step"] + 1, 5))
    for step, rate in logged:
        assert rate == pytest.approx(expected_learning_rate(step - 1, total), rel=1e-6, abs=1e-12), step
    assert logged[1] == (10, pytest.approx(LEARNING_RATE * 9 / 12)) and max(r for _, r in logged) <= LEARNING_RATE
    # Early stopping: evaluations every 10 steps until 3 in a row do not beat the best accuracy.
    evaluations = [(e["step"], e["eval_accuracy"]) for e in state["log_history"] if "eval_accuracy" in e]
    stop, best_step_expected, best = early_stop(evaluations, PATIENCE)
    assert stop is not None, f"early stopping never triggered: {evaluations}"
    assert [s for s, _ in evaluations] == list(range(EVAL_STEPS, stop + 1, EVAL_STEPS))
    assert state["global_step"] == metrics["global_step"] == stop < total
    assert (best_step, state["best_metric"]) == (best_step_expected, best)

    # The published model (the best checkpoint's) learned: loaded from S3 with transformers alone, it
    # beats the majority class on the held-out rows, as the job's own final evaluation said.
    accuracy = published_accuracy(bucket, "runs/knobs/", eval_rows, tmp_path / "published")
    majority = max(sum(r["label"] == label for r in eval_rows) for label in ("0", "1")) / len(eval_rows)
    assert accuracy > majority, (accuracy, majority)
    assert accuracy == pytest.approx(metrics["eval_accuracy"], abs=1.5 / len(eval_rows))  # padding: one row at most
    assert metrics["eval_accuracy"] == best
