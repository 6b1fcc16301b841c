"""FT_SECRETS' values read from Secrets Manager and SSM Parameter Store on the moto server, and the
failures as the user's (64) or the world's (75), each naming FT_SECRETS, the variable and the ARN;
the refusals AWS sends that moto does not are played by a small JSON server on 127.0.0.1."""

from __future__ import annotations

import http.server
import json
import os
import socket
import threading
import uuid

import boto3
import pytest

from entrypoint import __main__ as cli
from entrypoint.config import sensitive
from entrypoint.errors import UserError, WorldError
from entrypoint.io import aws, secret_store

VALUE = "hf_PLANTEDstoreValue7"


def refs(**arns: str) -> dict[str, sensitive.SecretReference]:
    return sensitive.references(",".join(f"{name}={arn}" for name, arn in arns.items()))


@pytest.fixture
def stored(aws_env):
    """A Secrets Manager secret (a string and a JSON one) and an SSM SecureString on moto: ARNs."""
    name = uuid.uuid4().hex[:8]
    region = {"region_name": aws_env["AWS_DEFAULT_REGION"]}  # not the default session: a test before may have made it
    sm, ssm = boto3.client("secretsmanager", **region), boto3.client("ssm", **region)
    plain = sm.create_secret(Name=f"hf-{name}", SecretString=VALUE)["ARN"]
    as_json = sm.create_secret(Name=f"keys-{name}", SecretString=json.dumps({"wandb": "wandb-PLANTED-8"}))["ARN"]
    ssm.put_parameter(Name=f"/ft/{name}/db", Value="db-PLANTED-value-9", Type="SecureString")
    parameter = ssm.get_parameter(Name=f"/ft/{name}/db")["Parameter"]["ARN"]
    return {"plain": plain, "json": as_json, "parameter": parameter}


def test_values_from_secrets_manager_and_ssm(stored):
    found = secret_store.read(
        refs(HF_TOKEN=stored["plain"], WANDB_API_KEY=f"{stored['json']}:wandb::", DB_PASSWORD=stored["parameter"])
    )
    assert found == {"HF_TOKEN": VALUE, "WANDB_API_KEY": "wandb-PLANTED-8", "DB_PASSWORD": "db-PLANTED-value-9"}


def test_the_job_exports_them_into_its_environment_and_remembers_them(stored, monkeypatch):
    monkeypatch.setattr(sensitive, "_known", set())
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_TOKEN", "an-earlier-value")  # FT_SECRETS wins
    values = cli.export_secrets(f"HF_TOKEN={stored['plain']}")
    assert values == {"HF_TOKEN": VALUE} and os.environ["HF_TOKEN"] == VALUE and VALUE in sensitive.known()
    assert cli.export_secrets(None) == {}


@pytest.mark.parametrize(
    ("kind", "arn", "expected"),
    [
        ("secretsmanager", "arn:aws:secretsmanager:us-east-1:123456789012:secret:nope-AbCdEf", "no such secret"),
        ("ssm", "arn:aws:ssm:us-east-1:123456789012:parameter/no/such", "no such parameter"),
    ],
)
def test_an_unknown_secret_is_the_users_error_naming_ft_secrets_and_the_arn(aws_env, kind, arn, expected):
    with pytest.raises(UserError) as info:
        secret_store.read(refs(HF_TOKEN=arn))
    assert str(info.value).startswith(f"FT_SECRETS: HF_TOKEN from {arn}: {expected}")
    assert info.value.exit_code == 64


def test_a_json_key_the_secret_lacks_is_the_users_error(stored):
    with pytest.raises(UserError, match="no text under the key 'missing'"):
        secret_store.read(refs(WANDB_API_KEY=f"{stored['json']}:missing::"))


class _Refusing(http.server.BaseHTTPRequestHandler):
    """Answers every request with the JSON error in `server.error` (status, __type)."""

    def log_message(self, *args):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.requests += 1
        status, code = self.server.error
        body = json.dumps({"__type": code, "message": f"injected {code}"}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def fresh_session():
    """aws.client's cached session may read an os.environ the process no longer has (datasets'
    map(num_proc=...) swaps os.environ for a copy), so it would miss this test's AWS_MAX_ATTEMPTS=1
    and wait out 8 attempts of backoff: a new session reads the environment the test sets."""
    aws._session.cache_clear()
    yield
    aws._session.cache_clear()


@pytest.fixture
def refusing(aws_env, monkeypatch, fresh_session):
    """Secrets Manager at a server that refuses every request as told; botocore retries off."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    server.requests = 0
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    yield server
    server.shutdown()
    server.server_close()


ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:hf-AbCdEf"


@pytest.mark.parametrize(
    ("error", "family", "expected"),
    [
        ((400, "AccessDeniedException"), UserError, "access denied (AccessDeniedException"),
        ((400, "DecryptionFailure"), UserError, "access denied (DecryptionFailure"),
        ((400, "InvalidRequestException"), UserError, "refused (InvalidRequestException"),
        ((400, "ThrottlingException"), WorldError, "secretsmanager failed (ThrottlingException"),
        ((500, "InternalServiceError"), WorldError, "secretsmanager failed (InternalServiceError"),
    ],
)
def test_refusals_are_the_users_and_throttling_the_worlds(refusing, error, family, expected):
    refusing.error = error
    with pytest.raises((UserError, WorldError)) as info:
        secret_store.read(refs(HF_TOKEN=ARN))
    assert type(info.value) is family and f"FT_SECRETS: HF_TOKEN from {ARN}: {expected}" in str(info.value)
    assert refusing.requests == 1  # AWS_MAX_ATTEMPTS=1 honoured: no backoff waited out
    if family is UserError and "access denied" in expected:
        assert "secretsmanager:GetSecretValue on this ARN, and kms:Decrypt" in str(info.value)


def test_an_unreachable_service_is_the_worlds_error(aws_env, monkeypatch, fresh_session):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL_SSM", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(WorldError, match=r"FT_SECRETS: DB_PASSWORD from arn:aws:ssm:.*could not reach ssm") as info:
        secret_store.read(refs(DB_PASSWORD="arn:aws:ssm:us-east-1:123456789012:parameter/db"))
    assert info.value.exit_code == 75
