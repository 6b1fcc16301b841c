"""LoRA (FT_LORA_R) end to end: `finetune train` as a subprocess against the moto S3 server on a
tiny Llama with instruction data; SIGTERM and resume of a PeftModel; adapter and merged outputs."""

import json

import boto3
import pytest

from tests.integration.conftest import assert_same_weights, final_weights
from tests.support import jobs, tiny_causal

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return tiny_causal.build_assets(tmp_path_factory.mktemp("lora"))


@pytest.fixture
def inputs(assets, bucket):
    model = jobs.upload_folder(assets / "model", bucket, "models/tiny-llama/")
    s3 = boto3.client("s3")
    for split in ("train", "eval"):
        s3.upload_file(str(assets / f"instruction-{split}.jsonl"), bucket, f"data/{split}.jsonl")
    return {
        "model": model,
        "task": "causal-lm",
        "train_data": f"s3://{bucket}/data/train.jsonl",
        "eval_data": f"s3://{bucket}/data/eval.jsonl",
        "prompt_column": "prompt",
        "response_column": "response",
        "lora_r": "4",
        "learning_rate": "5e-3",
        "num_train_epochs": "1",
        "per_device_train_batch_size": "4",
        "save_steps": "20",
        "logging_steps": "5",
        "seed": "7",
    }


def job_settings(inputs, bucket, run, tmp_path, **extra):
    return dict(inputs, output_uri=f"s3://{bucket}/runs/{run}/", work_dir=str(tmp_path / f"work-{run}"), **extra)


def download_output(bucket, run, folder):
    """The run's output folder (without its checkpoints), from S3 to `folder`."""
    prefix = f"runs/{run}/"
    for key in jobs.s3_keys(bucket, prefix):
        if not key.startswith(prefix + "checkpoints/"):
            path = folder / key.removeprefix(prefix)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(jobs.s3_bytes(bucket, key))
    return folder


def test_lora_sigterm_resume_is_bitwise_identical_and_merged_output_loads_without_peft(
    aws_env, bucket, inputs, assets, tmp_path
):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    straight = job_settings(inputs, bucket, "straight", tmp_path, **jobs.STOPPABLE)
    rc, out = jobs.run(jobs.child_env(aws_env, **straight), tmp_path)
    assert rc == 0, out[-3000:]
    assert "LoRA r=4 alpha=8 dropout=0.05 on q_proj,v_proj" in out
    keys = jobs.s3_keys(bucket, "runs/straight/")
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "metrics.json"):
        assert f"runs/straight/{name}" in keys
    assert "runs/straight/model.safetensors" not in keys  # the adapter alone
    adapter_config = json.loads(jobs.s3_bytes(bucket, "runs/straight/adapter_config.json"))
    assert adapter_config["r"] == 4 and adapter_config["base_model_name_or_path"] == inputs["model"]
    total = json.loads(jobs.s3_bytes(bucket, "runs/straight/metrics.json"))["global_step"]
    assert 75 <= total <= 80  # 320 rows at batch 4; a review longer than 128 tokens has no response left and is dropped

    env = jobs.child_env(
        aws_env, **job_settings(inputs, bucket, "interrupted", tmp_path, merge_adapter="true", **jobs.STOPPABLE)
    )
    job = jobs.Job(env, tmp_path)
    allowed = job.signal_between_steps("[metrics] step=25 ")
    assert job.finish() == 143, job.output()[-3000:]
    stopped = job.stop_step()
    assert stopped in allowed, f"the stop landed at step {stopped}, not at the next step boundary {sorted(allowed)}"
    assert jobs.complete_steps(env) == [stopped]  # no save scheduled before the end: the stop's own
    checkpoint = f"runs/interrupted/checkpoints/checkpoint-{stopped:09d}-g0001/"
    saved = jobs.s3_keys(bucket, checkpoint)
    assert f"{checkpoint}adapter_model.safetensors" in saved and f"{checkpoint}model.safetensors" not in saved
    adapter_bytes = saved[f"{checkpoint}adapter_model.safetensors"]
    assert adapter_bytes < 100_000  # the checkpoint holds the adapter, not the model

    rc, out = jobs.run(env, tmp_path)
    assert rc == 0, out[-3000:]
    assert f"(step {stopped})" in out
    metrics = json.loads(jobs.s3_bytes(bucket, "runs/interrupted/metrics.json"))
    assert metrics["resumed_from_step"] == stopped and metrics["global_step"] == total
    assert "runs/interrupted/adapter_config.json" not in jobs.s3_keys(bucket, "runs/interrupted/")

    # The straight run's adapter, merged here, equals the resumed run's merged output bit for bit.
    straight_dir = download_output(bucket, "straight", tmp_path / "straight")
    base = AutoModelForCausalLM.from_pretrained(assets / "model")
    straight_merged = PeftModel.from_pretrained(base, straight_dir).merge_and_unload()
    resumed_merged = final_weights(bucket, "interrupted")
    assert_same_weights({k: v for k, v in straight_merged.state_dict().items() if k in resumed_merged}, resumed_merged)
    original = AutoModelForCausalLM.from_pretrained(assets / "model").state_dict()
    assert not torch.equal(
        original["model.layers.0.self_attn.q_proj.weight"], resumed_merged["model.layers.0.self_attn.q_proj.weight"]
    )
    assert torch.equal(
        original["model.layers.0.self_attn.k_proj.weight"], resumed_merged["model.layers.0.self_attn.k_proj.weight"]
    )

    # The merged output is a plain model: transformers loads it without peft and it generates.
    merged_dir = download_output(bucket, "interrupted", tmp_path / "merged")
    model = AutoModelForCausalLM.from_pretrained(merged_dir)
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    assert not any("lora" in name for name in model.state_dict())
    prompt = tokenizer("Review: a gorgeous, witty film\nSentiment:", return_tensors="pt")
    generated = model.generate(**prompt, max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert generated.shape[1] > prompt["input_ids"].shape[1]
