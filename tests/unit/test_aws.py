"""io/aws.py's quiet_loggers: at FT_LOG_LEVEL=DEBUG botocore logs every request's headers, the
session token among them; the job's processes keep its loggers at WARNING whatever the level."""

from __future__ import annotations

import io
import logging

import pytest

from entrypoint.io import aws

SESSION_TOKEN = "PLANTEDsessionTokenForDebugLogs"


@pytest.fixture
def debug_log(aws_env, monkeypatch):
    """This process's logging at DEBUG into a buffer (as the job's at FT_LOG_LEVEL=DEBUG), with a
    planted session token; the loggers' levels are put back afterwards."""
    monkeypatch.setenv("AWS_SESSION_TOKEN", SESSION_TOKEN)
    aws._session.cache_clear()  # the session keeps the credentials it found first
    root = logging.getLogger()
    saved = (root.level, {name: logging.getLogger(name).level for name in aws.NOISY_LOGGERS})
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield buffer
    root.removeHandler(handler)
    root.setLevel(saved[0])
    for name, level in saved[1].items():
        logging.getLogger(name).setLevel(level)
    aws._session.cache_clear()


def request_something() -> None:
    aws.client("s3").list_buckets()


def test_at_debug_botocore_would_log_the_session_token(debug_log):
    """The hazard itself, so the next test cannot pass for a reason that went away."""
    for name in aws.NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)
    request_something()
    assert SESSION_TOKEN in debug_log.getvalue()


def test_quiet_loggers_keeps_it_out_at_debug(debug_log):
    aws.quiet_loggers()
    request_something()
    logged = debug_log.getvalue()
    assert SESSION_TOKEN not in logged and "botocore" not in logged
