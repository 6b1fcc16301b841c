"""FT_TASK=seq2seq end to end: the tiny BERT (an encoder only) is warm-started as both halves of an
EncoderDecoderModel and learns a toy task (a review → "this is a good/bad film") through the moto S3
server; BLEU of generated text is reported; an interrupted, resumed run ends with the same weights
as an uninterrupted one; the output loads with AutoModelForSeq2SeqLM."""

import json

import boto3
import pytest

from tests.integration.conftest import assert_same_weights, final_weights, settings
from tests.support import jobs, tiny

pytestmark = pytest.mark.integration

# 320 pairs / batch 8 = 40 steps per epoch, 2 epochs.
S2S = {
    "task": "seq2seq",
    "num_train_epochs": "2",
    "per_device_train_batch_size": "8",
    "learning_rate": "5e-3",
    "predict_with_generate": "true",
    "generation_max_length": "12",
    "source_column": "sentence",
    "target_column": "start",
}


@pytest.fixture
def pairs(job_inputs, bucket, tmp_path):
    rows = tiny.sst2_rows("train", 400)
    lines = [
        json.dumps({"sentence": r["text"], "start": f"this is a {'good' if r['label'] == '1' else 'bad'} film"})
        for r in rows
    ]
    s3 = boto3.client("s3")
    for name, part in (("train", lines[:320]), ("eval", lines[320:])):
        (tmp_path / f"{name}.jsonl").write_text("\n".join(part) + "\n")
        s3.upload_file(str(tmp_path / f"{name}.jsonl"), bucket, f"data/{name}.jsonl")
    return dict(
        job_inputs, train_data=f"s3://{bucket}/data/train.jsonl", eval_data=f"s3://{bucket}/data/eval.jsonl", **S2S
    )


def test_seq2seq_reports_bleu_resumes_bitwise_identically_and_reloads(aws_env, bucket, pairs, tmp_path):
    rc, out = jobs.run(
        jobs.child_env(aws_env, **settings(pairs, bucket, "straight", tmp_path, **jobs.STOPPABLE)), tmp_path
    )
    assert rc == 0, out[-3000:]
    assert "FT_MODEL is an encoder only (bert)" in out
    metrics = json.loads(jobs.s3_bytes(bucket, "runs/straight/metrics.json"))
    assert metrics["global_step"] == 80
    # The template is learned in 80 steps (the sentiment word need not be): BLEU well above zero.
    assert 20 < metrics["eval_bleu"] <= 100 and metrics["eval_loss"] > 0 and 1 < metrics["eval_gen_len"] <= 12
    assert f"eval_bleu={metrics['eval_bleu']:.6g}" in out

    env = jobs.child_env(aws_env, **settings(pairs, bucket, "interrupted", tmp_path, **jobs.STOPPABLE))
    stopped, out = jobs.stop_and_resume(env, tmp_path)
    assert 30 <= stopped < 80
    resumed = json.loads(jobs.s3_bytes(bucket, "runs/interrupted/metrics.json"))
    assert resumed["resumed_from_step"] == stopped and resumed["global_step"] == 80
    assert_same_weights(final_weights(bucket, "straight"), final_weights(bucket, "interrupted"))
    assert resumed["eval_bleu"] == metrics["eval_bleu"]

    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, EncoderDecoderModel

    folder = tmp_path / "downloaded"
    for key in jobs.s3_keys(bucket, "runs/straight/"):
        rel = key[len("runs/straight/") :]
        if not rel.startswith("checkpoints/"):
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_bytes(jobs.s3_bytes(bucket, key))
    model, tokenizer = AutoModelForSeq2SeqLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    assert isinstance(model, EncoderDecoderModel)
    generated = model.generate(
        **tokenizer(["a gorgeous , witty , seductive movie ."], return_tensors="pt"), max_length=12
    )
    assert generated[0, 0].item() == tokenizer.cls_token_id and generated.shape[1] > 2


def test_seq2seq_without_generation_reports_loss_only(aws_env, bucket, pairs, tmp_path):
    env = jobs.child_env(
        aws_env, **settings(dict(pairs, predict_with_generate="false", max_steps="5"), bucket, "loss", tmp_path)
    )
    rc, out = jobs.run(env, tmp_path)
    assert rc == 0, out[-3000:]
    metrics = json.loads(jobs.s3_bytes(bucket, "runs/loss/metrics.json"))
    assert metrics["eval_loss"] > 0 and "eval_bleu" not in metrics


def test_seq2seq_needs_its_columns(aws_env, bucket, pairs, tmp_path):
    env = jobs.child_env(aws_env, **settings(dict(pairs, target_column="target"), bucket, "col", tmp_path))
    rc, out = jobs.run(env, tmp_path)
    assert rc == 64 and "no column 'target' (from FT_TARGET_COLUMN)" in out and "Traceback" not in out
