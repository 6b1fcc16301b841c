"""The values FT_SECRETS names, read from AWS Secrets Manager and SSM Parameter Store when the job
starts (clients from aws.py; the job's role needs secretsmanager:GetSecretValue or ssm:GetParameter
on each ARN). Values are returned, never logged; the errors name FT_SECRETS, the variable and the
ARN: a missing secret or a refused request is the user's to fix (64), throttling and the network
the world's (75).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING

import botocore.exceptions

from entrypoint.errors import UserError, WorldError
from entrypoint.io import aws

if TYPE_CHECKING:
    from entrypoint.config.sensitive import SecretReference

# Codes retrying cannot cure: the ARN, the permissions, the key or the credentials are wrong.
USER_ERROR_CODES = frozenset(
    {
        "ResourceNotFoundException",
        "ParameterNotFound",
        "ParameterVersionNotFound",
        "AccessDeniedException",
        "AccessDenied",
        "DecryptionFailure",
        "KMSAccessDeniedException",
        "InvalidRequestException",  # e.g. a secret scheduled for deletion
        "InvalidParameterException",
        "ValidationException",
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "InvalidSignatureException",
    }
)
PERMISSION = {"secretsmanager": "secretsmanager:GetSecretValue", "ssm": "ssm:GetParameter"}


def read(references: Mapping[str, SecretReference]) -> dict[str, str]:
    """{ENV_NAME: value} for each reference; UserError or WorldError naming the first that failed."""
    return {name: read_one(name, ref) for name, ref in references.items()}


def read_one(name: str, ref: SecretReference) -> str:
    where = f"FT_SECRETS: {name} from {ref.arn}"
    try:
        client = aws.client(ref.service, region=ref.region)
        if ref.service == "ssm":
            value = client.get_parameter(Name=ref.arn, WithDecryption=True)["Parameter"]["Value"]
        else:
            value = _secret_string(client, ref, where)
    except botocore.exceptions.ClientError as exc:
        raise classify(exc, where, ref.service) from None
    except botocore.exceptions.NoCredentialsError as exc:
        raise UserError(f"{where}: no AWS credentials found (the job reads secrets with its role's)") from exc
    except botocore.exceptions.BotoCoreError as exc:
        raise WorldError(f"{where}: could not reach {ref.service} ({type(exc).__name__}); retrying may help") from None
    if not value:
        raise UserError(f"{where}: the value is empty")
    return value


def _secret_string(client, ref: SecretReference, where: str) -> str:
    request = {"SecretId": ref.arn}
    if ref.version_stage:
        request["VersionStage"] = ref.version_stage
    if ref.version_id:
        request["VersionId"] = ref.version_id
    response = client.get_secret_value(**request)
    if "SecretString" not in response:
        raise UserError(f"{where}: the secret holds binary data; store the value as a string (SecretString)")
    text = response["SecretString"]
    if ref.json_key is None:
        return text
    try:
        found = json.loads(text).get(ref.json_key)
    except (ValueError, AttributeError):
        raise UserError(
            f"{where}: the ARN names the JSON key {ref.json_key!r}, but the secret is no JSON object"
        ) from None
    if not isinstance(found, str):
        raise UserError(f"{where}: the secret's JSON object has no text under the key {ref.json_key!r}")
    return found


def classify(exc: botocore.exceptions.ClientError, where: str, service: str) -> UserError | WorldError:
    """The error a refused request becomes: the user's for a missing secret or a refusal, else the
    world's. The message never holds the response body beyond AWS's code and message."""
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    detail = f"{code}: {error.get('Message') or 'no message'}"
    if code in ("ResourceNotFoundException", "ParameterNotFound", "ParameterVersionNotFound"):
        return UserError(f"{where}: no such {'parameter' if service == 'ssm' else 'secret'} ({detail}). Check the ARN.")
    if code.startswith(("AccessDenied", "KMSAccessDenied")) or code == "DecryptionFailure":
        return UserError(
            f"{where}: access denied ({detail}). The job's role (Batch job role or SageMaker execution role) needs "
            f"{PERMISSION[service]} on this ARN, and kms:Decrypt on a customer-managed key that encrypts it; the "
            "Terraform iam module grants it with `secret_arns`."
        )
    if code in USER_ERROR_CODES:
        return UserError(f"{where}: refused ({detail})")
    return WorldError(f"{where}: {service} failed ({detail}); retrying may help")
