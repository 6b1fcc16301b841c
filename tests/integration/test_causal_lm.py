"""FT_TASK=causal-lm end to end: `finetune train` as a subprocess against the moto S3 server on a
tiny Llama, with a real SIGTERM and resume."""

import json
import re

import boto3
import pytest

from tests.integration.conftest import assert_same_weights, final_weights
from tests.support import jobs, tiny_causal

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return tiny_causal.build_assets(tmp_path_factory.mktemp("causal"))


@pytest.fixture
def inputs(assets, bucket):
    model = jobs.upload_folder(assets / "model", bucket, "models/tiny-llama/")
    s3 = boto3.client("s3")
    for path in assets.glob("*.jsonl"):
        s3.upload_file(str(path), bucket, f"data/{path.name}")
    return {
        "model": model,
        "task": "causal-lm",
        "per_device_train_batch_size": "4",
        "per_device_eval_batch_size": "16",
        "logging_steps": "5",
        "seed": "7",
        "learning_rate": "1e-3",
    }


def job_settings(inputs, bucket, run, tmp_path, kind, **extra):
    return dict(
        inputs,
        train_data=f"s3://{bucket}/data/{kind}-train.jsonl",
        eval_data=f"s3://{bucket}/data/{kind}-eval.jsonl",
        output_uri=f"s3://{bucket}/runs/{run}/",
        work_dir=str(tmp_path / f"work-{run}"),
        **extra,
    )


def test_packed_text_sigterm_and_resume_is_bitwise_identical_with_perplexity(aws_env, bucket, inputs, tmp_path):
    common = {"packing": "true", "max_length": "32", "num_train_epochs": "2", **jobs.STOPPABLE}
    rc, out = jobs.run(
        jobs.child_env(aws_env, **job_settings(inputs, bucket, "straight", tmp_path, "text", **common)), tmp_path
    )
    assert rc == 0, out[-3000:]
    straight = json.loads(jobs.s3_bytes(bucket, "runs/straight/metrics.json"))
    total = straight["global_step"]
    assert total >= 40  # packed blocks of 32 tokens, 2 epochs

    env = jobs.child_env(aws_env, **job_settings(inputs, bucket, "interrupted", tmp_path, "text", **common))
    job = jobs.Job(env, tmp_path)
    allowed = job.signal_between_steps("[metrics] step=15 ")
    assert job.finish() == 143, job.output()[-3000:]
    stopped = job.stop_step()
    assert stopped in allowed, f"the stop landed at step {stopped}, not at the next step boundary {sorted(allowed)}"
    assert 15 <= stopped < total
    assert jobs.complete_steps(env) == [stopped]  # no save scheduled before the end: the stop's own

    rc, out = jobs.run(env, tmp_path)
    assert rc == 0, out[-3000:]
    assert f"(step {stopped})" in out
    resumed = json.loads(jobs.s3_bytes(bucket, "runs/interrupted/metrics.json"))
    assert resumed["resumed_from_step"] == stopped and resumed["global_step"] == total
    assert_same_weights(final_weights(bucket, "straight"), final_weights(bucket, "interrupted"))

    # Perplexity is exp(eval loss), in metrics.json and in the [metrics] lines SageMaker parses.
    assert resumed["eval_perplexity"] == pytest.approx(2.718281828 ** resumed["eval_loss"], rel=1e-6)
    assert resumed["eval_perplexity"] == pytest.approx(straight["eval_perplexity"], rel=1e-6)
    assert re.search(r"\[metrics\] .*eval_perplexity=[0-9.]+", out)
    assert resumed["eval_perplexity"] < 400  # learned something: below a uniform guess over the vocabulary
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert f"runs/interrupted/{name}" in jobs.s3_keys(bucket, "runs/interrupted/")


# The default suite keeps a causal-LM stop and bit-exact resume (the packed test above), padding-free
# batches in a real job (the chat test below) and their numerics and plan (unit test_causal_lm.py).
@pytest.mark.slow
def test_padding_free_instructions_sigterm_and_resume_is_bitwise_identical(aws_env, bucket, inputs, tmp_path):
    common = {
        "prompt_column": "prompt",
        "response_column": "response",
        "max_length": "64",
        "max_steps": "24",
        **jobs.STOPPABLE,
    }

    def env(run, **extra):
        return jobs.child_env(aws_env, **job_settings(inputs, bucket, run, tmp_path, "instruction", **common, **extra))

    rc, out = jobs.run(env("free"), tmp_path)
    assert rc == 0, out[-3000:]
    assert "attention: sdpa: transformers' default" in out
    assert "padding-free batches: 4 examples flattened per batch with position ids (attention: sdpa" in out
    assert "FT_PADDING_FREE=false turns this off" in out

    stopped, out = jobs.stop_and_resume(env("free-interrupted"), tmp_path, after="[metrics] step=10 ")
    assert 10 <= stopped < 24 and "padding-free batches" in out
    assert_same_weights(final_weights(bucket, "free"), final_weights(bucket, "free-interrupted"))

    # Padded batches train the same model up to float rounding: the same targets, the same contexts
    # (flattened examples that saw each other moved the eval loss by 5e-4 here).
    rc, out = jobs.run(env("padded", padding_free="false"), tmp_path)
    assert rc == 0, out[-3000:]
    assert "padded batches: FT_PADDING_FREE=false" in out
    free = json.loads(jobs.s3_bytes(bucket, "runs/free/metrics.json"))
    padded = json.loads(jobs.s3_bytes(bucket, "runs/padded/metrics.json"))
    assert free["eval_loss"] == pytest.approx(padded["eval_loss"], rel=1e-5)


def test_chat_data_trains_on_assistant_turns_and_writes_a_loadable_model(aws_env, bucket, inputs, tmp_path):
    settings = job_settings(
        inputs, bucket, "chat", tmp_path, "chat", messages_column="messages", max_steps="8", max_length="64"
    )
    rc, out = jobs.run(jobs.child_env(aws_env, **settings), tmp_path)
    assert rc == 0, out[-3000:]
    assert "padding-free batches: 4 examples flattened per batch with position ids" in out
    metrics = json.loads(jobs.s3_bytes(bucket, "runs/chat/metrics.json"))
    assert metrics["global_step"] == 8 and metrics["eval_perplexity"] > 1
    config = json.loads(jobs.s3_bytes(bucket, "runs/chat/config.json"))
    assert config["architectures"] == ["LlamaForCausalLM"]
    tokenizer_config = json.loads(jobs.s3_bytes(bucket, "runs/chat/tokenizer_config.json"))
    assert tokenizer_config.get("pad_token") == tiny_causal.EOS  # set for padding, saved with the model


def test_chat_column_holding_plain_text_is_a_user_error(aws_env, bucket, inputs, tmp_path):
    settings = job_settings(inputs, bucket, "textchat", tmp_path, "text", messages_column="text")
    rc, out = jobs.run(jobs.child_env(aws_env, **settings), tmp_path)
    assert rc == 64 and "Traceback" not in out
    assert "FT_MESSAGES_COLUMN: every row must be a list of {role, content} messages" in out
