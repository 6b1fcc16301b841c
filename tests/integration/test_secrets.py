"""No secret in anything the job or `finetune submit` writes.

A recognisable token is planted in every place a user could put one: FT_HUB_TOKEN, HF_TOKEN in the
job's environment, a secret in (moto) Secrets Manager and a parameter in SSM that FT_SECRETS names
(HF_TOKEN, which a gated model on the fake Hub needs, and WANDB_API_KEY), AWS_SESSION_TOKEN, and
`--set`/`--env` on submit. Then every byte is searched: the job's stdout and stderr at
FT_LOG_LEVEL=DEBUG, every S3 object it wrote (checkpoints with training_args.bin, model,
settings.json, metrics.json, report.html, TensorBoard files), its local scratch, what submit
prints, and every request sent to AWS (a FaultProxy in front of moto records them; the session
token must travel in the X-Amz-Security-Token header, and only there). The token may appear only
where it must: the requests this test makes itself (straight to moto) and the answers of
GetSecretValue and GetParameter (answers are not recorded).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path

import boto3
import pytest

from entrypoint.config.sensitive import REDACTED
from tests.integration.conftest import settings
from tests.support import fake_hub, jobs
from tests.support.fakes import FaultProxy

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
MARK = "PLANTEDq7Z"  # in every planted value: found anywhere, something leaked
HUB_TOKEN = f"hf_{MARK}hubToken1"  # FT_HUB_TOKEN
HF_ENV = f"hf_{MARK}plainEnv2"  # HF_TOKEN as the job's environment has it; FT_SECRETS replaces it
HF_SECRET = f"hf_{MARK}fromSecretsManager3"  # the gated model's token, kept in Secrets Manager only
WANDB = f"{MARK}wandbFromSsm4"  # WANDB_API_KEY, kept in SSM Parameter Store
SESSION = f"{MARK}sessionToken5"  # AWS_SESSION_TOKEN (moto takes any)
SESSION_HEADER = "x-amz-security-token"


def readable(data: bytes) -> list[bytes]:
    """`data`, and each member of it when it is a zip file (torch.save writes training_args.bin so)."""
    parts = [data]
    if data[:4] == b"PK\x03\x04":
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            parts += [archive.read(name) for name in archive.namelist()]
    return parts


def leaks(places: dict[str, bytes]) -> list[str]:
    return [where for where, data in places.items() if any(MARK.encode() in part for part in readable(data))]


def request_leaks(proxy: FaultProxy) -> list[str]:
    """Requests that carry the mark anywhere but the session token header."""
    found = []
    for method, path, headers, body in proxy.requests:
        shown = {k: v for k, v in headers.items() if k.lower() != SESSION_HEADER}
        if MARK in path or MARK in json.dumps(shown) or MARK.encode() in body:
            found.append(f"{method} {path} {headers.get('X-Amz-Target', '')}")
    return found


@pytest.fixture
def stored_secrets(aws_env):
    """HF_SECRET in Secrets Manager and WANDB in SSM, created straight on moto: their ARNs."""
    name = uuid.uuid4().hex[:8]
    secret = boto3.client("secretsmanager").create_secret(Name=f"hf-{name}", SecretString=HF_SECRET)["ARN"]
    ssm = boto3.client("ssm")
    ssm.put_parameter(Name=f"/ft/{name}/wandb", Value=WANDB, Type="SecureString")
    parameter = ssm.get_parameter(Name=f"/ft/{name}/wandb")["Parameter"]["ARN"]
    return secret, parameter


@pytest.fixture
def proxy(moto_server):
    recorder = FaultProxy(moto_server)
    yield recorder
    recorder.close()


def test_a_job_at_debug_leaks_no_planted_secret_anywhere(
    aws_env, bucket, job_inputs, tiny_assets, tmp_path, stored_secrets, proxy
):
    secret_arn, parameter_arn = stored_secrets
    with fake_hub.FakeHub() as hub:
        hub.add("org/gated-bert", fake_hub.folder_files(tiny_assets / "model"), token=HF_SECRET)
        run = settings(
            job_inputs,
            bucket,
            "secrets",
            tmp_path,
            model="org/gated-bert",
            max_steps="4",
            save_steps="2",
            logging_steps="1",
            report_to="tensorboard",
            log_level="DEBUG",
            hub_token=HUB_TOKEN,
            secrets=f"HF_TOKEN={secret_arn},WANDB_API_KEY={parameter_arn}",
        )
        job_aws = dict(aws_env, AWS_ENDPOINT_URL=proxy.url, AWS_SESSION_TOKEN=SESSION)
        env = fake_hub.child_env(jobs.child_env(job_aws, **run), hub, tmp_path / "hf-home", token=HF_ENV)
        rc, out = jobs.run(env, tmp_path)
    # The gated model downloads only with the token FT_SECRETS read from Secrets Manager.
    assert rc == 0, out[-4000:]
    assert "FT_SECRETS: set HF_TOKEN, WANDB_API_KEY from AWS (values not shown)" in out
    assert " DEBUG " in out, "the job did not log at DEBUG"
    assert " DEBUG botocore" not in out and " DEBUG urllib3" not in out, "quiet_loggers did not hold"

    s3 = boto3.client("s3")
    keys = jobs.s3_keys(bucket, "runs/secrets/")
    objects = {f"s3://{bucket}/{key}": s3.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys}
    for expected in ("settings.json", "metrics.json", "report.html", "model.safetensors"):
        assert f"s3://{bucket}/runs/secrets/{expected}" in objects, expected
    assert any(k.endswith("/training_args.bin") for k in keys), "no checkpoint's training_args.bin was written"
    assert any("tensorboard/" in k and "events.out.tfevents" in k for k in keys), "no TensorBoard file was written"
    assert json.loads(objects[f"s3://{bucket}/runs/secrets/settings.json"])["hub_token"] == REDACTED

    local = {str(p): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert any(p.endswith("training_args.bin") for p in local), "the scratch checkpoints were not searched"

    assert leaks({"the job's output": out.encode()}) == []
    assert leaks(objects) == []
    assert leaks(local) == []
    assert request_leaks(proxy) == []

    targets = [h.get("X-Amz-Target", "") for _, _, h, _ in proxy.requests]
    assert "secretsmanager.GetSecretValue" in targets and "AmazonSSM.GetParameter" in targets
    assert all({k.lower(): v for k, v in h.items()}.get(SESSION_HEADER) == SESSION for _, _, h, _ in proxy.requests), (
        "every request must carry the planted session token (where it must be: its header)"
    )
    uploads = [body for method, _, _, body in proxy.requests if method == "PUT" and body]
    assert uploads, "the proxy saw no upload, so the request search saw nothing"


def finetune(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "entrypoint", "submit", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


SAGEMAKER = [
    "sagemaker",
    "--image",
    "123456789012.dkr.ecr.us-east-1.amazonaws.com/finetune:1",
    "--role",
    "arn:aws:iam::123456789012:role/finetune-sagemaker",
    "--instance-type",
    "ml.g5.xlarge",
    "--output-s3-uri",
    "s3://bucket/outputs/",
    "--set",
    "FT_MODEL=org/gated-bert",
]
BATCH = ["batch", "--job-queue", "q", "--job-definition", "d", "--set", "FT_MODEL=org/gated-bert"]


def test_submit_refuses_secrets_by_value_and_sends_and_prints_none(aws_env, proxy, tmp_path, capsys):
    from entrypoint.errors import UserError
    from entrypoint.submit import command as submit

    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("FT_", "AWS_"))},
        **aws_env,
        "AWS_ENDPOINT_URL": proxy.url,
        "AWS_SESSION_TOKEN": SESSION,
        "HF_TOKEN": HF_ENV,
        "HF_HUB_OFFLINE": "1",
    }
    env_file = tmp_path / "job.env"
    env_file.write_text("FT_TRAIN_DATA=s3://bucket/data/\nHF_TOKEN\n")  # a bare name takes the shell's value
    attempts = {
        "--set FT_HUB_TOKEN": ["--set", f"FT_HUB_TOKEN={HUB_TOKEN}"],
        "--env HF_TOKEN": ["--env", f"HF_TOKEN={HF_ENV}"],
        "--env WANDB_API_KEY": ["--env", f"WANDB_API_KEY={WANDB}"],
        f"--env-file {env_file}: HF_TOKEN": ["--env-file", str(env_file)],
        "--env INNOCENT": ["--env", f"INNOCENT={SESSION}"],
        "--set FT_SECRETS": ["--set", f"FT_SECRETS=HF_TOKEN={HF_SECRET}"],
    }
    printed = {}
    # Each attempt alone, in this process (the CLI logs the UserError's message and exits 64) ...
    for what, argv in attempts.items():
        for target in (BATCH, SAGEMAKER):
            for dry_run in ([], ["--dry-run"]):
                with pytest.raises(UserError) as info:
                    submit.main([*target, *argv, *dry_run], env)
                assert what in str(info.value) and info.value.exit_code == 64
                shown = capsys.readouterr()
                printed[f"{what} {target[0]} {dry_run}"] = (str(info.value) + shown.out + shown.err).encode()
    # ... and all of them as the command runs them.
    done = finetune([*SAGEMAKER, *(a for argv in attempts.values() for a in argv), "--dry-run"], env)
    assert done.returncode == 64 and all(what in done.stderr for what in attempts), done.stderr[-3000:]
    printed["the command"] = (done.stdout + done.stderr).encode()

    arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:hf-token-AbCdEf"
    assert submit.main([*BATCH, "--set", f"FT_SECRETS=HF_TOKEN={arn}", "--dry-run"], env) == 0
    shown = capsys.readouterr()
    environment = json.loads(shown.out)["containerOverrides"]["environment"]
    assert {"name": "FT_SECRETS", "value": f"HF_TOKEN={arn}"} in environment
    printed["dry run"] = (shown.out + shown.err).encode()
    sent = finetune([*SAGEMAKER, "--set", f"FT_SECRETS=HF_TOKEN={arn}"], env)
    assert sent.returncode == 0, sent.stderr[-2000:]
    printed["submit"] = (sent.stdout + sent.stderr).encode()
    described = boto3.client("sagemaker").describe_training_job(TrainingJobName=sent.stdout.strip())
    assert described["HyperParameters"]["secrets"] == f"HF_TOKEN={arn}"

    assert leaks(printed) == []
    assert MARK not in json.dumps(described, default=str)
    assert request_leaks(proxy) == []
    assert [h.get("X-Amz-Target") for _, _, h, _ in proxy.requests] == ["SageMaker.CreateTrainingJob"], (
        "a refused submission must send nothing"
    )


def test_on_sagemaker_an_unknown_secret_fails_as_the_users_naming_ft_secrets_and_the_arn(aws_env, tmp_path):
    """FT_SECRETS as a hyperparameter (as `finetune submit sagemaker --set` sends it), a secret
    that does not exist: exit 64 before any download, and the failure file SageMaker shows says
    which variable and ARN, with no credential in it."""
    arn = f"arn:aws:secretsmanager:us-east-1:123456789012:secret:nope-{uuid.uuid4().hex[:6]}"
    root = tmp_path / "opt_ml"
    (root / "input" / "config").mkdir(parents=True)
    hyper = {"model": "org/gated-bert", "train_data": "s3://bucket/data/train.csv", "secrets": f"HF_TOKEN={arn}"}
    (root / "input" / "config" / "hyperparameters.json").write_text(json.dumps(hyper))
    env = jobs.child_env(dict(aws_env, AWS_SESSION_TOKEN=SESSION), work_dir=str(tmp_path / "work"))
    env.update(SAGEMAKER_BASE_DIR=str(root), TRAINING_JOB_NAME="ft-secrets", HF_TOKEN=HF_ENV)
    rc, out = jobs.run(env, tmp_path)
    assert rc == 64 and "Traceback" not in out, out[-3000:]
    failure = (root / "output" / "failure").read_text()
    assert failure.startswith(f"FT_SECRETS: HF_TOKEN from {arn}: no such secret"), failure
    assert leaks({"output": out.encode(), "failure": failure.encode()}) == []
