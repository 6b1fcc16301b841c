"""Spot resilience end to end: the spot notice, kill -9 at random moments, a misbehaving S3,
a stale attempt still writing, and SageMaker's synced checkpoint folder."""

import json
import random
import shutil
import signal
import time

import boto3
import pytest

from entrypoint.durability import checkpoints as ck
from entrypoint.durability import manifests as mf
from entrypoint.io.storage import S3Store
from tests.integration.conftest import assert_same_weights, final_weights, settings
from tests.support import jobs
from tests.support.fakes import FakeIMDS, FaultProxy

pytestmark = pytest.mark.integration


def baseline(aws_env, bucket, job_inputs, tmp_path, **extra):
    rc, out = jobs.run(jobs.child_env(aws_env, **settings(job_inputs, bucket, "baseline", tmp_path, **extra)), tmp_path)
    assert rc == 0, out[-3000:]
    return final_weights(bucket, "baseline")


def all_complete_checkpoints_verify(bucket, prefix, tmp_path):
    store = S3Store(f"s3://{bucket}/{prefix}")
    found = [c for c in ck.scan(store) if c.complete]
    assert found, "no complete checkpoint"
    for cp in found:
        for rel, meta in cp.manifest["files"].items():
            data = jobs.s3_bytes(bucket, f"{prefix}{cp.name}/{rel}")
            assert len(data) == meta["size"]
            assert __import__("hashlib").sha256(data).hexdigest() == meta["sha256"], (cp.name, rel)
    return found


def test_spot_notice_checkpoints_and_exits_143_with_zero_steps_lost(aws_env, bucket, job_inputs, tmp_path):
    expected = baseline(aws_env, bucket, job_inputs, tmp_path)
    imds = FakeIMDS()
    try:
        env = jobs.child_env(
            aws_env, **settings(job_inputs, bucket, "notice", tmp_path, spot_notice_poll_seconds="0.2")
        )
        env.pop("AWS_EC2_METADATA_DISABLED")
        env["AWS_EC2_METADATA_SERVICE_ENDPOINT"] = imds.url
        job = jobs.Job(env, tmp_path)
        job.wait_for("[metrics] step=20 ")
        imds.notice()
        assert job.finish() == 143, job.output()[-3000:]
        assert imds.token_requests >= 1 and imds.polls_with_token >= 2  # IMDSv2: token first
        out = job.output()
        assert "spot interruption notice" in out and "steps_lost=0" in out
        assert "notice_to_durable_s=" in out
        imds.notice_body = None
        rc, out = jobs.run(env, tmp_path)
        assert rc == 0, out[-3000:]
    finally:
        imds.close()
    metrics = json.loads(jobs.s3_bytes(bucket, "runs/notice/metrics.json"))
    assert metrics["run_interruptions"] == 1 and metrics["run_steps_lost"] == 0 and metrics["run_restarts"] == 1
    assert_same_weights(expected, final_weights(bucket, "notice"))


def kill_campaign(aws_env, bucket, job_inputs, tmp_path, kills: int, seed: int, epochs: str = "3"):
    """Start the job, SIGKILL it after a random delay, again and again; then let it finish.
    `epochs` must leave enough work for every kill to land before the job ends."""
    expected = baseline(aws_env, bucket, job_inputs, tmp_path, save_steps="5", num_train_epochs=epochs)
    rng = random.Random(seed)
    env = jobs.child_env(
        aws_env,
        **settings(
            job_inputs, bucket, "killed", tmp_path, save_steps="5", checkpoint_keep_last="1", num_train_epochs=epochs
        ),
    )
    done, restored, lives = 0, [], 0
    while True:
        lives += 1
        job = jobs.Job(env, tmp_path)
        if done < kills:
            try:
                job.wait_for("[metrics] step=", timeout_s=120)  # training has started: kill mid-work
            except AssertionError:
                pass
            time.sleep(rng.uniform(0.0, 1.5))
        if done < kills and job.proc.poll() is None:
            job.proc.send_signal(signal.SIGKILL)
            job.finish()
            done += 1
        else:
            rc = job.finish()
            assert rc == 0, job.output()[-3000:]
            break
        out = job.output()
        assert "Traceback" not in out, out[-3000:]
        restored += [line for line in out.splitlines() if "restored checkpoint" in line]
    assert done == kills and lives == kills + 1, f"the job finished after {done} of {kills} kills: give it more epochs"
    assert restored, "no restart ever resumed from a checkpoint"
    assert_same_weights(expected, final_weights(bucket, "killed"))
    all_complete_checkpoints_verify(bucket, "runs/killed/checkpoints/", tmp_path)


# The default suite keeps what a kill -9 relies on: a newer incomplete checkpoint skipped at restore
# (test_sagemaker_mode_uses_the_synced_folder_and_skips_an_incomplete_restore here; unit
# test_checkpoints.py), a resume as exact as an uninterrupted run (the spot notice test), the upload
# process dying with a killed job (test_checkpoints.py); make test-slow runs both campaigns.
@pytest.mark.slow
def test_kill_9_campaign_short(aws_env, bucket, job_inputs, tmp_path):
    kill_campaign(aws_env, bucket, job_inputs, tmp_path, kills=5, seed=1234, epochs="8")


@pytest.mark.slow
@pytest.mark.timeout(3600)  # 25 restarts of a 40-epoch job
def test_kill_9_campaign_long(aws_env, bucket, job_inputs, tmp_path):
    kill_campaign(aws_env, bucket, job_inputs, tmp_path, kills=25, seed=20261129, epochs="40")


def test_flaky_s3_retries_and_the_job_finishes_identically(aws_env, bucket, job_inputs, tmp_path):
    expected = baseline(aws_env, bucket, job_inputs, tmp_path)
    proxy = FaultProxy(aws_env["AWS_ENDPOINT_URL"], rate=0.15, seed=7)
    try:
        env = jobs.child_env(
            dict(aws_env, AWS_ENDPOINT_URL=proxy.url), **settings(job_inputs, bucket, "flaky", tmp_path)
        )
        env["AWS_MAX_ATTEMPTS"] = "10"
        rc, out = jobs.run(env, tmp_path)
        assert rc == 0, out[-3000:]
    finally:
        proxy.close()
    assert sum(proxy.injected.values()) >= 5, proxy.injected
    assert_same_weights(expected, final_weights(bucket, "flaky"))
    all_complete_checkpoints_verify(bucket, "runs/flaky/checkpoints/", tmp_path)


def test_a_failed_checkpoint_upload_is_logged_and_training_goes_on(aws_env, bucket, job_inputs, tmp_path):
    proxy = FaultProxy(aws_env["AWS_ENDPOINT_URL"], fail_paths=("checkpoint-000000025-",))
    try:
        env = jobs.child_env(
            dict(aws_env, AWS_ENDPOINT_URL=proxy.url), **settings(job_inputs, bucket, "ckfail", tmp_path)
        )
        env["AWS_MAX_ATTEMPTS"] = "2"
        rc, out = jobs.run(env, tmp_path)
    finally:
        proxy.close()
    assert rc == 0, out[-3000:]
    assert "upload of checkpoint 25 failed" in out
    assert "checkpoint_upload_failures=1" in out
    steps = [c.step for c in all_complete_checkpoints_verify(bucket, "runs/ckfail/checkpoints/", tmp_path)]
    assert 25 not in steps and max(steps) == 240


def test_a_failed_final_model_upload_fails_the_job(aws_env, bucket, job_inputs, tmp_path):
    proxy = FaultProxy(aws_env["AWS_ENDPOINT_URL"], fail_paths=("runs/final/model.safetensors",))
    try:
        env = jobs.child_env(
            dict(aws_env, AWS_ENDPOINT_URL=proxy.url), **settings(job_inputs, bucket, "final", tmp_path, max_steps="20")
        )
        env["AWS_MAX_ATTEMPTS"] = "2"
        rc, out = jobs.run(env, tmp_path)
    finally:
        proxy.close()
    assert rc == 75, out[-3000:]
    assert "runs/final/metrics.json" not in jobs.s3_keys(bucket, "runs/final/")  # never taken for complete


# The default suite keeps the fences one by one: a superseded upload commits nothing and its retention
# deletes nothing of the newer attempt (unit test_checkpoints.py), nor does it publish the model (exit
# 75, test_outputs.py), and a superseded main process stops every rank (test_distributed.py).
@pytest.mark.slow
def test_a_stale_attempt_cannot_corrupt_the_newer_one(aws_env, bucket, job_inputs, tmp_path):
    """Attempt 1 is stopped (SIGTERM) at step ~100 with a checkpoint. Attempt 2, the stale one, trains
    with another seed, so that anything it writes differs from what this job writes; it is frozen
    (SIGSTOP) once it has claimed its attempt number and restored attempt 1's checkpoint, and goes
    on (SIGCONT) only once attempt 3, the newer one, has claimed the next number. Attempt 2 must
    then stop writing at its next checkpoint and exit 75, and leave attempt 3's checkpoints and
    final output as attempt 3 wrote them: the same model as an uninterrupted run."""
    extra = dict(num_train_epochs="20", save_steps="50", logging_steps="50")
    expected = baseline(aws_env, bucket, job_inputs, tmp_path, **extra)
    env = jobs.child_env(aws_env, **settings(job_inputs, bucket, "twice", tmp_path, **extra))
    claims = "runs/twice/checkpoints/_attempts/"
    s3 = boto3.client("s3")
    # A versioned bucket, as the Terraform module makes: every write and delete stays on record.
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})

    first = jobs.Job(env, tmp_path)
    first.wait_for("[metrics] step=100 ")
    first.signal(signal.SIGTERM)
    assert first.finish() == 143, first.output()[-3000:]
    restored = f"restored checkpoint checkpoint-{first.stop_step():09d}-g0001"

    stale = jobs.Job(dict(env, FT_SEED="8"), tmp_path)
    newer = None
    try:
        stale.pause_at(restored, [stale.proc.pid])
        assert f"{claims}000002" in jobs.s3_keys(bucket, claims)
        newer = jobs.Job(dict(env, FT_WORK_DIR=str(tmp_path / "work-newer")), tmp_path)
        jobs.wait_until(lambda: f"{claims}000003" in jobs.s3_keys(bucket, claims), "attempt 3's claim", 120)
    except BaseException:
        for job in (stale, newer):
            if job is not None:
                job.proc.kill()  # never leave a job running behind a failed test
        raise
    finally:
        stale.resume([stale.proc.pid])

    def newer_files() -> dict[str, str]:
        """ETag of every key under the run but attempt 2's own (its claim and checkpoint folders)."""
        listed = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="runs/twice/")
        etags = {o["Key"]: o["ETag"] for page in listed for o in page.get("Contents", [])}
        return {k: v for k, v in etags.items() if not k.startswith(f"{claims}000002") and "-g0002/" not in k}

    rc_newer = newer.finish()
    written_by_newer = newer_files()
    rc_stale = stale.finish()
    assert rc_newer == 0, newer.output()[-3000:]
    assert rc_stale == 75 and "a newer attempt" in stale.output(), f"rc={rc_stale}\n{stale.output()[-3000:]}"
    now = newer_files()
    changed = sorted(k for k, etag in written_by_newer.items() if now.get(k) != etag)
    assert not changed, f"the stale attempt changed or deleted files of the newer one: {changed}"
    assert restored in newer.output()

    # The record of every write: attempt 2 never committed a checkpoint (once attempt 3 had claimed
    # its number, before attempt 2's first save, none of its checkpoints may become complete, even
    # for a moment), and no checkpoint file or final output file was ever written twice.
    written: dict[str, int] = {}
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix="runs/twice/"):
        for version in page.get("Versions", []):
            written[version["Key"]] = written.get(version["Key"], 0) + 1
    committed_by_stale = [k for k in written if k.endswith(f"-g0002/{mf.MANIFEST}")]
    assert not committed_by_stale, f"the stale attempt committed {committed_by_stale}"
    final_output = {f"runs/twice/{name}" for name in ("model.safetensors", "config.json", "metrics.json")}
    rewritten = [k for k, n in written.items() if n > 1 and ("/checkpoint-" in k or k in final_output)]
    assert not rewritten, f"written more than once: {rewritten}"
    assert final_output <= written.keys()
    found = all_complete_checkpoints_verify(bucket, "runs/twice/checkpoints/", tmp_path)
    assert (found[0].step, found[0].generation) == (1600, 3)
    metrics = json.loads(jobs.s3_bytes(bucket, "runs/twice/metrics.json"))
    assert metrics["attempt"] == 3 and metrics["run_restarts"] == 2
    assert_same_weights(expected, final_weights(bucket, "twice"))


def sagemaker_dirs(root, tiny_assets):
    (root / "input" / "config").mkdir(parents=True)
    (root / "input" / "data" / "train").mkdir(parents=True)
    shutil.copy(tiny_assets / "train.csv", root / "input" / "data" / "train" / "train.csv")
    (root / "input" / "config" / "resourceconfig.json").write_text(
        json.dumps({"current_host": "algo-1", "hosts": ["algo-1"]})
    )
    (root / "input" / "config" / "inputdataconfig.json").write_text(json.dumps({"train": {}}))
    hyper = {
        "model": json.dumps(str(tiny_assets / "model")),
        "num_train_epochs": "3",
        "per_device_train_batch_size": "4",
        "save_steps": "25",
        "logging_steps": "5",
        "seed": "7",
    }
    (root / "input" / "config" / "hyperparameters.json").write_text(json.dumps(hyper))
    return root


def test_sagemaker_mode_uses_the_synced_folder_and_skips_an_incomplete_restore(tiny_assets, tmp_path):
    root = sagemaker_dirs(tmp_path / "opt_ml", tiny_assets)
    env = jobs.child_env({}, work_dir=str(tmp_path / "work"))
    env.update(SAGEMAKER_BASE_DIR=str(root), TRAINING_JOB_NAME="ft-test")
    job = jobs.Job(env, tmp_path)
    job.wait_for("[metrics] step=30 ")
    job.signal(signal.SIGTERM)
    assert job.finish() == 143, job.output()[-3000:]
    assert "SageMaker training job ft-test" in job.output()
    checkpoints = root / "checkpoints"
    complete = sorted(checkpoints.glob(f"checkpoint-*/{mf.MANIFEST}"))
    assert complete, "no complete checkpoint in /opt/ml/checkpoints"
    # The platform restores whatever it had synced, a half-written checkpoint included.
    newest = complete[-1].parent
    half = checkpoints / mf.store_name(999, 1)
    shutil.copytree(newest, half)
    (half / mf.MANIFEST).unlink()
    rc, out = jobs.run(env, tmp_path)
    assert rc == 0, out[-3000:]
    assert f"skipping checkpoint {half.name}: incomplete" in out
    assert f"restored checkpoint {newest.name}" in out
    assert (root / "model" / "model.safetensors").is_file() and (root / "model" / "metrics.json").is_file()


def test_sagemaker_failure_file_gets_the_users_error(tiny_assets, tmp_path):
    root = sagemaker_dirs(tmp_path / "opt_ml", tiny_assets)
    env = jobs.child_env({}, work_dir=str(tmp_path / "work"), save_steps="often")
    env.update(SAGEMAKER_BASE_DIR=str(root), TRAINING_JOB_NAME="ft-test")
    rc, out = jobs.run(env, tmp_path)
    assert rc == 64 and "Traceback" not in out
    assert "FT_SAVE_STEPS is invalid" in (root / "output" / "failure").read_text()
