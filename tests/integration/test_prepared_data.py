"""Prepared data kept at FT_CACHE_URI: a miss for any change of what determines it, a hit otherwise
(a restart, a later job, tune trials), and the same weights as a job that prepares its own data.
The job as a subprocess against the moto S3 server."""

import json
import re

import boto3
import pytest

from tests.integration.conftest import assert_same_weights, final_weights, settings
from tests.support import jobs, tiny

pytestmark = pytest.mark.integration

LINE = re.compile(r"prepared data: (miss|cache hit) at \S+ \(key ([0-9a-f]{32})\)")


def outcome(out: str) -> tuple[str, str]:
    """('miss' or 'cache hit', key) of the job's one prepared-data line."""
    found = LINE.findall(out)
    assert len(found) == 1, f"expected one prepared-data line, got {found}\n{out[-3000:]}"
    return found[0]


@pytest.mark.slow  # the default suite keeps one run of this path; make test-slow runs all
def test_any_change_that_determines_the_data_misses_and_nothing_else_does(
    aws_env, bucket, job_inputs, tiny_assets, tmp_path
):
    rows = [dict(r, sentiment="pos" if r["label"] == "1" else "neg") for r in tiny.sst2_rows("train", 200)]
    fields = ("text", "label", "sentiment")
    s3 = boto3.client("s3")
    s3.upload_file(str(tiny.write_csv(tmp_path / "train.csv", rows[:160], fields)), bucket, "c/train.csv")
    s3.upload_file(str(tiny.write_csv(tmp_path / "eval.csv", rows[160:], fields)), bucket, "c/eval.csv")
    tokenizer = json.loads((tiny_assets / "model" / "tokenizer.json").read_text())
    jobs.upload_folder(tiny_assets / "model", bucket, "models/retok/")
    s3.put_object(Bucket=bucket, Key="models/retok/tokenizer.json", Body=json.dumps(tokenizer, indent=1).encode())
    base = dict(
        train_data=f"s3://{bucket}/c/train.csv",
        eval_data=f"s3://{bucket}/c/eval.csv",
        cache_uri=f"s3://{bucket}/shared-cache/",  # shared by the jobs below
        max_steps="1",
    )

    def job(run: str, **changed) -> tuple[str, str]:
        rc, out = jobs.run(
            jobs.child_env(aws_env, **settings(job_inputs, bucket, run, tmp_path, **base, **changed)), tmp_path
        )
        assert rc == 0, out[-3000:]
        return outcome(out)

    first = job("first")
    assert first[0] == "miss"
    assert job("later", learning_rate="1e-3", seed="3") == ("cache hit", first[1])  # a later job, other training
    keys = {first[1]}
    for run, changed in {
        "tokenizer": {"model": f"s3://{bucket}/models/retok/"},
        "length": {"max_length": "32"},
        "column": {"label_column": "sentiment"},
    }.items():
        kind, key = job(run, **changed)
        assert kind == "miss" and key not in keys, run
        keys.add(key)
    rows[0] = dict(rows[0], text=rows[0]["text"] + " !")  # one changed row
    s3.upload_file(str(tiny.write_csv(tmp_path / "train.csv", rows[:160], fields)), bucket, "c/train.csv")
    kind, key = job("data")
    assert kind == "miss" and key not in keys
    manifest = json.loads(jobs.s3_bytes(bucket, f"shared-cache/prepared/{key}/finetune-manifest.json"))
    assert manifest["prepared"]["settings"]["label_column"] == "label"


def test_a_restart_loads_the_prepared_data_and_ends_bitwise_equal_to_a_job_without_the_cache(
    aws_env, bucket, job_inputs, tmp_path
):
    uncached = settings(job_inputs, bucket, "uncached", tmp_path, cache_prepared_data="false", **jobs.STOPPABLE)
    rc, out = jobs.run(jobs.child_env(aws_env, **uncached), tmp_path)
    assert rc == 0, out[-3000:]
    assert "prepared data:" not in out and not jobs.s3_keys(bucket, "runs/uncached/cache/prepared/")

    env = jobs.child_env(aws_env, **settings(job_inputs, bucket, "cached", tmp_path, **jobs.STOPPABLE))
    job = jobs.Job(env, tmp_path)
    allowed = job.signal_between_steps("[metrics] step=30 ")
    assert job.finish() == 143, job.output()[-3000:]
    assert job.stop_step() in allowed
    missed = outcome(job.output())
    assert missed[0] == "miss"

    rc, out = jobs.run(env, tmp_path)
    assert rc == 0, out[-3000:]
    assert outcome(out) == ("cache hit", missed[1])
    assert "loaded FT_TRAIN_DATA" not in out  # the raw data was not even downloaded
    assert f"(step {job.stop_step()})" in out
    metrics = json.loads(jobs.s3_bytes(bucket, "runs/cached/metrics.json"))
    assert metrics["prepared_data_hit"] == 1 and metrics["stage_prepared_load_s"] > 0
    assert_same_weights(final_weights(bucket, "uncached"), final_weights(bucket, "cached"))


@pytest.mark.slow  # the default suite keeps one run of this path; make test-slow runs all
def test_tune_trials_that_tokenize_alike_share_the_prepared_data(aws_env, bucket, job_inputs, tmp_path):
    space = json.dumps({"max_length": {"choices": [32]}, "learning_rate": {"low": 1e-5, "high": 1e-3, "log": True}})
    env = jobs.child_env(
        aws_env,
        **settings(job_inputs, bucket, "tune", tmp_path, max_steps="3", tune_trials="2", tune_search_space=space),
    )
    rc, out = jobs.run(env, tmp_path, "tune")
    assert rc == 0, out[-3000:]
    found = LINE.findall(out)
    assert [kind for kind, _ in found] == ["miss", "cache hit"] and found[0][1] == found[1][1], found
