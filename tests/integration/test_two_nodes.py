"""Two machines on one: two `finetune train` launchers, each with its own FT_WORK_DIR (a node's
local disk), joined as an AWS Batch multi-node parallel job (AWS_BATCH_JOB_NUM_NODES=2, gloo on
CPU) or as a SageMaker training job on two instances (each with its own /opt/ml). Every machine's
files reach the checkpoint; world rank 0 commits one manifest only when both parts are there; a
resume on both machines matches an uninterrupted run bit for bit."""

import json
import shutil
import signal
import socket

import psutil
import pytest

from entrypoint.durability import checkpoints as ck
from entrypoint.durability import manifests as mf
from entrypoint.io.storage import LocalStore
from tests.integration.conftest import assert_same_weights, final_weights, settings
from tests.support import jobs
from tests.support.fakes import FaultProxy

pytestmark = pytest.mark.integration

STEPS = 24


def node_env(aws_env, job_inputs, bucket, run, tmp_path, node, port, attempt=1, **extra):
    """The environment AWS Batch gives node `node` of a two-node job (the main node is node 0)."""
    env = jobs.child_env(
        aws_env,
        **settings(job_inputs, bucket, run, tmp_path, num_processes="1", ddp_backend="gloo", **extra),
    )
    env.update(
        FT_WORK_DIR=str(tmp_path / f"work-{run}-node{node}"),
        AWS_BATCH_JOB_ID=f"job-{run}#{node}",
        AWS_BATCH_JOB_ATTEMPT=str(attempt),
        AWS_BATCH_JOB_NUM_NODES="2",
        AWS_BATCH_JOB_NODE_INDEX=str(node),
        AWS_BATCH_JOB_MAIN_NODE_INDEX="0",
        AWS_EC2_METADATA_DISABLED="true",
        MASTER_PORT=str(port),
    )
    if node:
        env["AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS"] = "127.0.0.1"
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def both(envs, tmp_path):
    return [jobs.Job(env, tmp_path) for env in envs]


def finish(nodes, timeout_s=400):
    codes = [node.finish(timeout_s) for node in nodes]
    for i, node in enumerate(nodes):  # for a failing test's report
        print(f"===== node {i}: exit {codes[i]}\n{node.output()[-6000:]}")
    return codes


def kill_tree(job):
    """kill -9 of a whole machine: the launcher, its training process and its upload process."""
    procs = [psutil.Process(job.proc.pid), *psutil.Process(job.proc.pid).children(recursive=True)]
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass


def manifest_files(bucket, run, step, generation=1):
    key = f"runs/{run}/checkpoints/checkpoint-{step:09d}-g{generation:04d}/finetune-manifest.json"
    return json.loads(jobs.s3_bytes(bucket, key))["files"]


def test_sigterm_on_the_other_node_then_resume_on_both_matches_an_uninterrupted_run(
    aws_env, bucket, job_inputs, tmp_path
):
    short = {"max_steps": str(STEPS), **jobs.STOPPABLE}
    port = free_port()
    straight = both(
        [node_env(aws_env, job_inputs, bucket, "straight", tmp_path, n, port, **short) for n in (0, 1)], tmp_path
    )
    codes = finish(straight)
    assert codes == [0, 0], straight[0].output()[-3000:] + straight[1].output()[-3000:]
    assert "of 2 (master 127.0.0.1" in straight[1].output()

    envs = [node_env(aws_env, job_inputs, bucket, "stopped", tmp_path, n, port + 1, **short) for n in (0, 1)]
    stopped = both(envs, tmp_path)
    stopped[0].wait_for("[metrics] step=10 ", timeout_s=300)
    stopped[1].signal(signal.SIGTERM)  # the spot notice reached the other machine only
    codes = finish(stopped)
    assert codes == [143, 143], stopped[0].output()[-3000:] + stopped[1].output()[-3000:]
    step = stopped[0].stop_step()
    assert 10 <= step < STEPS
    files = manifest_files(bucket, "stopped", step)
    # node 0 wrote the model, optimizer and rank 0's RNG state; node 1 only rank 1's: both are in
    assert {"model.safetensors", "optimizer.pt", "rng_state_0.pth", "rng_state_1.pth"} <= set(files)
    assert "this machine's part (node 1" in stopped[1].output()

    envs = [node_env(aws_env, job_inputs, bucket, "stopped", tmp_path, n, port + 2, attempt=2, **short) for n in (0, 1)]
    resumed = both(envs, tmp_path)
    codes = finish(resumed)
    assert codes == [0, 0], resumed[0].output()[-3000:] + resumed[1].output()[-3000:]
    for node in resumed:  # each machine downloaded the checkpoint into its own disk
        assert f"restored checkpoint checkpoint-{step:09d}-g0001 (step {step})" in node.output()
    node1 = tmp_path / "work-stopped-node1" / "checkpoints" / f"checkpoint-{step}"
    assert (node1 / "rng_state_1.pth").exists() and not (node1 / "rng_state_0.pth").exists()
    metrics = json.loads(jobs.s3_bytes(bucket, "runs/stopped/metrics.json"))
    assert metrics["resumed_from_step"] == step and metrics["global_step"] == STEPS
    assert_same_weights(final_weights(bucket, "straight"), final_weights(bucket, "stopped"))


@pytest.mark.slow
def test_kill_9_of_the_other_node_during_its_upload_leaves_that_checkpoint_incomplete(
    aws_env, bucket, job_inputs, moto_server, tmp_path
):
    every = {"max_steps": str(STEPS), "save_steps": "8", "logging_steps": "1"}
    port = free_port()
    stalled = "checkpoint-000000016-g0001/rng_state_1.pth"
    proxy = FaultProxy(moto_server, stall_paths=(stalled,))  # node 1's part of step 16: never answered
    try:
        envs = [node_env(aws_env, job_inputs, bucket, "killed", tmp_path, n, port, **every) for n in (0, 1)]
        envs[1]["AWS_ENDPOINT_URL"] = proxy.url
        nodes = both(envs, tmp_path)
        jobs.wait_until(
            lambda: any(stalled in path for _, path, _, _ in proxy.requests), "node 1's upload of step 16", 300
        )
        kill_tree(nodes[1])
        codes = finish(nodes, timeout_s=300)
    finally:
        proxy.close()
    assert codes[0] != 0 and codes[1] == -signal.SIGKILL, codes
    keys = jobs.s3_keys(bucket, "runs/killed/checkpoints/")
    assert "runs/killed/checkpoints/checkpoint-000000016-g0001/finetune-manifest.json" not in keys
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= set(manifest_files(bucket, "killed", 8))

    envs = [node_env(aws_env, job_inputs, bucket, "killed", tmp_path, n, port + 1, attempt=2, **every) for n in (0, 1)]
    resumed = both(envs, tmp_path)
    codes = finish(resumed)
    assert codes == [0, 0], resumed[0].output()[-3000:] + resumed[1].output()[-3000:]
    assert "skipping checkpoint checkpoint-000000016-g0001: incomplete" in resumed[0].output()
    assert "restored checkpoint checkpoint-000000008-g0001 (step 8)" in resumed[1].output()


# SageMaker's hosts are algo-1, algo-2, ... resolved by the cluster's DNS; here the first (sorted)
# host, the master every instance connects to, must resolve on this machine.
HOSTS = ["localhost", "node-b"]


def instance_env(aws_env, job_inputs, tiny_assets, bucket, run, tmp_path, node, port, **extra):
    """Instance `node` of a two-instance SageMaker training job: its own /opt/ml (the training data
    in its channel, checkpoints in /opt/ml/checkpoints, SageMaker's default) and its own disk."""
    root = tmp_path / f"opt_ml-{run}-{node}"
    config = root / "input" / "config"
    if not config.exists():
        config.mkdir(parents=True)
        for channel, name in (("train", "train.csv"), ("validation", "eval.csv")):
            (root / "input" / "data" / channel).mkdir(parents=True)
            shutil.copy(tiny_assets / name, root / "input" / "data" / channel / name)
        (config / "resourceconfig.json").write_text(json.dumps({"current_host": HOSTS[node], "hosts": HOSTS}))
        (config / "inputdataconfig.json").write_text(json.dumps({"train": {}, "validation": {}}))
    inputs = {k: v for k, v in job_inputs.items() if k not in ("train_data", "eval_data")}
    inputs.update(output_uri=f"s3://{bucket}/runs/{run}/", num_processes="1", ddp_backend="gloo", **extra)
    env = jobs.child_env(aws_env, **inputs)
    env.update(
        FT_WORK_DIR=str(tmp_path / f"work-{run}-node{node}"),
        SAGEMAKER_BASE_DIR=str(root),
        TRAINING_JOB_NAME=f"job-{run}",
        AWS_EC2_METADATA_DISABLED="true",
        MASTER_PORT=str(port),
    )
    return env, root / "checkpoints"


def restored_by_the_platform(folders):
    """What SageMaker puts into each instance's /opt/ml/checkpoints before a restart: everything
    every instance synced to the checkpoint_s3_uri prefix (deletions included)."""
    union = {}
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file():
                union[path.relative_to(folder)] = path
    for folder in folders:
        for rel, path in union.items():
            if not (folder / rel).exists():
                (folder / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, folder / rel)


def test_sagemaker_two_instances_each_with_its_own_checkpoint_folder(
    aws_env, bucket, job_inputs, tiny_assets, tmp_path
):
    short = {"max_steps": str(STEPS), "logging_steps": "1", "save_steps": "6", "checkpoint_keep_last": "1"}
    port = free_port()
    straight = [
        jobs.Job(
            instance_env(aws_env, job_inputs, tiny_assets, bucket, "sm-straight", tmp_path, n, port, **short)[0],
            tmp_path,
        )
        for n in (0, 1)
    ]
    codes = finish(straight)
    assert codes == [0, 0], straight[0].output()[-3000:] + straight[1].output()[-3000:]
    assert "host node-b of 2" in straight[1].output() and "of 2 (master localhost" in straight[1].output()

    made = [
        instance_env(aws_env, job_inputs, tiny_assets, bucket, "sm-stopped", tmp_path, n, port + 1, **short)
        for n in (0, 1)
    ]
    folders = [folder for _, folder in made]
    stopped = [jobs.Job(env, tmp_path) for env, _ in made]
    stopped[0].wait_for("[metrics] step=15 ", timeout_s=300)
    stopped[1].signal(signal.SIGTERM)
    codes = finish(stopped)
    assert codes == [143, 143], stopped[0].output()[-3000:] + stopped[1].output()[-3000:]
    step = stopped[0].stop_step()
    assert 15 <= step < STEPS
    # each instance's folder holds its own part; world rank 0's manifest lists both
    newest = mf.store_name(step, 1)
    manifest = ck.read_manifest(LocalStore(str(folders[0])), newest)
    assert {"model.safetensors", "rng_state_0.pth", "rng_state_1.pth"} <= set(manifest["files"])
    assert not (folders[0] / newest / "rng_state_1.pth").exists()
    assert sorted(p.name for p in (folders[1] / newest).iterdir()) == ["rng_state_1.pth"]
    # retention (keep 1) removed the older checkpoints from both instances' folders, so from the prefix too
    for folder in folders:
        assert sorted(p.name for p in folder.glob("checkpoint-*")) == [newest], folder

    restored_by_the_platform(folders)
    made = [
        instance_env(aws_env, job_inputs, tiny_assets, bucket, "sm-stopped", tmp_path, n, port + 2, **short)
        for n in (0, 1)
    ]
    resumed = [jobs.Job(env, tmp_path) for env, _ in made]
    codes = finish(resumed)
    assert codes == [0, 0], resumed[0].output()[-3000:] + resumed[1].output()[-3000:]
    for node in resumed:
        assert f"restored checkpoint {mf.store_name(step, 1)} (step {step})" in node.output()
    assert_same_weights(final_weights(bucket, "sm-straight"), final_weights(bucket, "sm-stopped"))
