"""Publishing the final model (job/outputs.py) over an earlier output, and by a stale attempt."""

import json

import boto3
import pytest

from entrypoint.errors import WorldError
from entrypoint.io.storage import LocalStore
from entrypoint.job import outputs
from tests.support import jobs
from tests.support.fakes import FaultProxy

EARLIER = {
    "config.json": b'{"old": true}',
    "model.safetensors": b"old weights",
    "model.safetensors.index.json": b"{}",  # an old sharded model's index: loading the folder would follow it
    "model-00001-of-00002.safetensors": b"old shard",
    "metrics.json": b'{"global_step": 10}',
    "checkpoints/_attempts/000001": b"{}",
    "checkpoints/checkpoint-000000010-g0001/model.safetensors": b"checkpoint",
    "tensorboard/events.out.tfevents.1": b"events",
}
KEEP_UNDER = ("checkpoints/", "tensorboard/")


def new_model(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"new": true}')
    (folder / "model.safetensors").write_bytes(b"new weights")
    return folder


def test_a_republish_replaces_the_earlier_model_and_removes_its_metrics_first(
    bucket, moto_server, monkeypatch, tmp_path
):
    s3 = boto3.client("s3")
    for key, data in EARLIER.items():
        s3.put_object(Bucket=bucket, Key=f"run/{key}", Body=data)
    proxy = FaultProxy(moto_server)  # forwards everything and keeps the requests, in order
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    try:
        uri = f"s3://{bucket}/run/"
        keep = (uri + "checkpoints/", uri + "tensorboard/")
        outputs.publish(new_model(tmp_path), {"global_step": 20}, uri, 2, keep=keep)
    finally:
        proxy.close()
        monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    keys = jobs.s3_keys(bucket, "run/")
    assert set(keys) == {"run/config.json", "run/model.safetensors", "run/metrics.json"} | {
        f"run/{k}" for k in EARLIER if k.startswith(KEEP_UNDER)
    }
    assert json.loads(jobs.s3_bytes(bucket, "run/metrics.json")) == {"global_step": 20}
    requests = [(method, path, body) for method, path, _, body in proxy.requests]
    metrics_gone = next(
        i for i, (method, path, body) in enumerate(requests) if "delete" in path and b"run/metrics.json" in body
    )
    first_model_put = next(i for i, (method, path, _) in enumerate(requests) if method == "PUT" and "model" in path)
    assert metrics_gone < first_model_put  # the old metrics.json never vouches for a half-new model


def test_a_republish_to_a_folder_keeps_the_checkpoint_and_tensorboard_folders(tmp_path):
    out = LocalStore(str(tmp_path / "out"))
    for key, data in EARLIER.items():
        out.write_bytes(key, data)
    keep = (str(tmp_path / "out" / "checkpoints"), str(tmp_path / "out" / "tensorboard") + "/")
    outputs.publish(new_model(tmp_path), {"global_step": 20}, str(tmp_path / "out"), 2, keep=keep)
    assert set(out.list()) == {"config.json", "model.safetensors", "metrics.json"} | {
        k for k in EARLIER if k.startswith(KEEP_UNDER)
    }


def test_nothing_is_removed_when_a_kept_location_is_the_output_itself(tmp_path):
    out = LocalStore(str(tmp_path / "out"))
    out.write_bytes("checkpoint-000000010-g0001/model.safetensors", b"checkpoint")
    outputs.publish(new_model(tmp_path), {}, str(tmp_path / "out"), 2, keep=(str(tmp_path / "out"),))
    assert "checkpoint-000000010-g0001/model.safetensors" in out.list()


def test_a_stale_attempt_publishes_nothing(tmp_path):
    out = LocalStore(str(tmp_path / "out"))
    for key, data in EARLIER.items():
        out.write_bytes(key, data)
    with pytest.raises(WorldError) as raised:
        outputs.publish(new_model(tmp_path), {"global_step": 20}, str(tmp_path / "out"), 2, superseded=lambda: True)
    assert raised.value.exit_code == 75 and "newer attempt" in str(raised.value)
    assert {k: out.read_bytes(k) for k in out.list()} == EARLIER  # the newer attempt's output is untouched
