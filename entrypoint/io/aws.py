"""The one adaptor over boto3: every AWS client in the project is made here.

boto3 itself honours the standard `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_<SERVICE>` variables
(https://docs.aws.amazon.com/sdkref/latest/guide/feature-ss-endpoints.html), so tests point the
whole program at a local S3 server by setting them; nothing here is patched.
"""

from __future__ import annotations

import functools
import logging
import threading

import boto3
import botocore.config

# Retries use botocore's own modes: "standard" retries throttling (SlowDown, 503), 500s and
# connection errors with exponential backoff and jitter.
# https://boto3.amazonaws.com/v1/documentation/api/latest/guide/retries.html
RETRY_MODE = "standard"
MAX_ATTEMPTS = 8
MAX_POOL_CONNECTIONS = 32

_lock = threading.Lock()


@functools.cache
def _session() -> boto3.session.Session:
    return boto3.session.Session()


def client(service: str, region: str | None = None):
    """A boto3 client for `service` with the project's retry and connection-pool settings.

    The standard AWS_MAX_ATTEMPTS / AWS_RETRY_MODE variables (or the AWS config file) win over
    the project's defaults. Clients are thread-safe; sessions are not, hence the lock.
    """
    with _lock:
        session = _session()
        chain = session._session  # botocore's own config chain: environment, then config file
        retries = {
            "mode": chain.get_config_variable("retry_mode") if _configured(chain, "retry_mode") else RETRY_MODE,
            "total_max_attempts": int(chain.get_config_variable("max_attempts") or MAX_ATTEMPTS),
        }
        config = botocore.config.Config(
            retries=retries, max_pool_connections=MAX_POOL_CONNECTIONS, connect_timeout=10, read_timeout=60
        )
        return session.client(service, region_name=region or session.region_name or "us-east-1", config=config)


def _configured(chain, name: str) -> bool:
    """Whether the user set `name` (botocore reports a default for retry_mode otherwise)."""
    return chain.get_config_variable(name, methods=("env", "config")) is not None


# Their INFO lines ("Found credentials in environment variables", "Found endpoint for s3 via:
# environment_global") repeat for every client, and at DEBUG botocore logs request headers,
# session tokens included: they log warnings and errors only, whatever FT_LOG_LEVEL says.
NOISY_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3")


def quiet_loggers() -> None:
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
