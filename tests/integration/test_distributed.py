"""Two training processes (FT_NUM_PROCESSES=2, gloo on CPU) launched by `finetune train`:
one uploader, a stop agreed by both, resume."""

import json
import re

import pytest

from tests.integration.conftest import final_weights, settings
from tests.support import jobs

pytestmark = pytest.mark.integration

TWO = {"num_processes": "2", "ddp_backend": "gloo"}
STEPS = 120  # 320 rows, 3 epochs, 4 rows per process and step, 2 processes


def two_process_settings(job_inputs, bucket, run, tmp_path, **extra):
    return settings(job_inputs, bucket, run, tmp_path, **TWO, **extra)


def stop_steps(output: str) -> dict[int, int]:
    """{rank: step} from each process's 'saving a checkpoint at step N' line."""
    found = re.findall(r"\[rank(\d+)\] .*saving a checkpoint at step (\d+)", output)
    return {int(rank): int(step) for rank, step in found}


def test_two_processes_train_and_only_rank_zero_uploads(aws_env, bucket, job_inputs, tmp_path):
    rc, out = jobs.run(jobs.child_env(aws_env, **two_process_settings(job_inputs, bucket, "two", tmp_path)), tmp_path)
    assert rc == 0, out[-4000:]
    assert "starting 2 processes on this machine" in out
    assert "[rank0] " in out and "[rank1] " in out
    keys = jobs.s3_keys(bucket, "runs/two/")
    attempts = sorted(k for k in keys if "/_attempts/" in k)
    assert attempts == ["runs/two/checkpoints/_attempts/000001"], attempts  # one claim: one uploader
    manifests = [k for k in keys if k.endswith("finetune-manifest.json") and "/checkpoints/" in k]
    assert manifests and all(re.search(r"checkpoint-\d{9}-g0001/", k) for k in manifests)
    checkpoint = next(k for k in manifests if f"checkpoint-{STEPS:09d}-" in k)
    files = json.loads(jobs.s3_bytes(bucket, checkpoint))["files"]
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= set(files)  # both processes' parts, uploaded once
    for name in ("config.json", "model.safetensors", "tokenizer.json", "metrics.json"):
        assert f"runs/two/{name}" in keys
    assert not any("-rank1" in k for k in keys)
    metrics = json.loads(jobs.s3_bytes(bucket, "runs/two/metrics.json"))
    assert metrics["global_step"] == STEPS  # the data was split between the two processes
    assert out.count("[metrics] step=") >= 1 and "[rank1] " not in "".join(
        line for line in out.splitlines(True) if "[metrics]" in line
    )


# The default suite keeps a stop agreed by two ranks and a resume that matches bit for bit
# (test_two_nodes.py's SIGTERM test), a stop at the next step boundary (test_causal_lm.py), and the
# launcher forwarding a stop to every local process (unit test_distributed.py).
@pytest.mark.slow
def test_sigterm_to_the_launcher_stops_both_at_one_step_and_resume_matches(aws_env, bucket, job_inputs, tmp_path):
    short = {"max_steps": "60", **jobs.STOPPABLE}
    rc, out = jobs.run(
        jobs.child_env(aws_env, **two_process_settings(job_inputs, bucket, "straight", tmp_path, **short)), tmp_path
    )
    assert rc == 0, out[-4000:]

    env = jobs.child_env(aws_env, **two_process_settings(job_inputs, bucket, "stopped", tmp_path, **short))
    job = jobs.Job(env, tmp_path)
    allowed = job.signal_between_steps("[metrics] step=30 ", processes=2)  # SIGTERM to the launcher
    assert job.finish() == 143, job.output()[-4000:]
    steps = stop_steps(job.output())
    assert set(steps) == {0, 1} and steps[0] == steps[1], steps  # both ranks stopped at the same step
    stopped = steps[0]
    assert stopped in allowed, f"the stop landed at step {stopped}, not at the next step boundary {sorted(allowed)}"
    assert 30 <= stopped < 60
    assert jobs.complete_steps(env) == [stopped]  # no save scheduled before the end: the stop's own
    keys = jobs.s3_keys(bucket, "runs/stopped/")
    assert f"runs/stopped/checkpoints/checkpoint-{stopped:09d}-g0001/finetune-manifest.json" in keys
    assert "steps_lost=0" in job.output()
    assert "runs/stopped/metrics.json" not in keys

    rc, out = jobs.run(env, tmp_path)
    assert rc == 0, out[-4000:]
    assert f"restored checkpoint checkpoint-{stopped:09d}-g0001 (step {stopped})" in out
    metrics = json.loads(jobs.s3_bytes(bucket, "runs/stopped/metrics.json"))
    assert metrics["resumed_from_step"] == stopped and metrics["global_step"] == 60
    assert metrics["run_interruptions"] == 1 and metrics["run_restarts"] == 1

    straight, resumed = final_weights(bucket, "straight"), final_weights(bucket, "stopped")
    assert straight.keys() == resumed.keys()
    different = [name for name in straight if not (straight[name] == resumed[name]).all()]
    assert not different, different


def test_a_user_error_in_one_process_ends_all_with_its_exit_code(aws_env, bucket, job_inputs, tmp_path):
    # The model is fetched by the machine's first process only; the other learns of the failure
    # instead of waiting for a download that never comes.
    env = jobs.child_env(
        aws_env, **two_process_settings(job_inputs, bucket, "nomodel", tmp_path, model=f"s3://{bucket}/nothing/")
    )
    rc, out = jobs.run(env, tmp_path)  # torchrun SIGTERMs the process still running: never 143 (test_launch.py)
    assert rc == 64, out[-4000:]
    assert "interrupted by" not in out
    assert "[rank0]" in out and "Nothing found at s3://" in out
    assert "[rank1]" in out and "another process failed" in out
    assert "Traceback" not in out
