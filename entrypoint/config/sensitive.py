"""Secrets: which names hold one, keeping their values out of everything the project writes, and
the FT_SECRETS references that bring them into a job.

One rule for the whole project: settings.json and report.html (`redact`), `finetune submit` (it
refuses secret-looking names and redacts what --dry-run prints), and the job's log lines and
failure file (`scrub`, `install_log_scrubber`). A name holds a secret when one of its words (split
at `_`, `-`, `.` and at a lower-to-upper case change) is TOKEN, SECRET, PASSWORD, PASSWD,
PASSPHRASE, CREDENTIAL or CREDENTIALS, or KEY right after API or PRIVATE (APIKEY as one word too);
TOKEN in the tokenizer's sense (PAD_TOKEN, TOKEN_ID) does not count. Whole words:
FT_AVERAGE_TOKENS_ACROSS_DEVICES and FT_HUB_PRIVATE_REPO are not secrets, nor is FT_SECRETS, which
holds ARNs. Values are scrubbed from text where they are known: the values of
secret-looking variables and of those FT_SECRETS names, and `user:password@` in a URI.

FT_SECRETS names `ENV_NAME=ARN` pairs (comma-separated, or a JSON object) of AWS Secrets Manager
secrets and SSM Parameter Store parameters; io/secret_store.py reads them when the job starts.
This module imports nothing of the project and nothing heavy: the light install uses it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any

REDACTED = "(redacted)"
SECRET_WORDS = frozenset({"TOKEN", "SECRET", "PASSWORD", "PASSWD", "PASSPHRASE", "CREDENTIAL", "CREDENTIALS", "APIKEY"})
KEY_QUALIFIERS = frozenset({"API", "PRIVATE"})  # API_KEY, PRIVATE_KEY
# TOKEN in the tokenizer's sense (pad_token_id, eos_token, token_type_ids) is no secret.
TOKENIZER_BEFORE = frozenset({"PAD", "EOS", "BOS", "UNK", "SEP", "CLS", "MASK", "START", "END", "SPECIAL"})
TOKENIZER_AFTER = frozenset({"ID", "IDS", "TYPE", "TYPES", "COUNT"})
WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")  # camelCase, snake_case and kebab-case words
URL_CREDENTIALS = re.compile(r"(?<=://)[^/@\s]+@")  # user:password@ in a URI
# Shorter values are not scrubbed from text: they would blank out ordinary words (the tests' AWS
# credentials are "testing"), and no real token is that short.
MIN_SCRUBBED_LENGTH = 8
SECRETS_SETTING = "FT_SECRETS"
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# https://docs.aws.amazon.com/secretsmanager/latest/userguide/reference_iam-permissions.html#iam-resources
# and, as Batch's valueFrom takes it, an optional json-key:version-stage:version-id after the ARN.
SECRETSMANAGER_ARN = re.compile(
    r"^(?P<arn>arn:aws[a-z-]*:secretsmanager:(?P<region>[a-z0-9-]+):[0-9]{12}:secret:[^:\s]+)"
    r"(?::(?P<json_key>[^:\s]*)(?::(?P<version_stage>[^:\s]*)(?::(?P<version_id>[^:\s]*))?)?)?$"
)
SSM_ARN = re.compile(r"^(?P<arn>arn:aws[a-z-]*:ssm:(?P<region>[a-z0-9-]+):[0-9]{12}:parameter/\S+)$")
EXAMPLE = "HF_TOKEN=arn:aws:secretsmanager:us-east-1:123456789012:secret:hf-token-AbCdEf"


def words(name: str) -> list[str]:
    """The words of a variable or field name, upper case: `hubToken` and `HUB_TOKEN` -> HUB, TOKEN."""
    return [w.upper() for w in WORD.findall(name)]


def is_secret_name(name: str) -> bool:
    """Whether `name` says its value is a secret (see the module's docstring)."""
    parts = words(name)
    for i, part in enumerate(parts):
        before, after = parts[i - 1] if i else "", parts[i + 1] if i + 1 < len(parts) else ""
        if part == "TOKEN" and (before in TOKENIZER_BEFORE or after in TOKENIZER_AFTER):
            continue
        if part in SECRET_WORDS or (part == "KEY" and before in KEY_QUALIFIERS):
            return True
    return False


def scrub(text: str, known: Iterable[str] = ()) -> str:
    """`text` without the `known` secret values (the longest first) and URI credentials."""
    text = URL_CREDENTIALS.sub(f"{REDACTED}@", text)
    for secret in sorted({s for s in known if len(s) >= MIN_SCRUBBED_LENGTH}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def redact(values: Any, known: Iterable[str] = (), names: Iterable[str] = ()) -> Any:
    """`values` (JSON-like: mappings, lists, text) fit to show: the value under a secret-looking
    key or one of `names` replaced by REDACTED, also in {"name": ..., "value": ...} pairs (the
    Batch API's environment), and the values found so, the `known` ones and URI credentials
    scrubbed from all other text."""
    names = set(names)
    found = set(known) | set(_secret_values(values, names))
    return _redact(values, found, names)


def _is_secret_key(key: Any, names: set[str]) -> bool:
    return isinstance(key, str) and (key in names or is_secret_name(key))


def _secret_values(values: Any, names: set[str]) -> Iterable[str]:
    if isinstance(values, Mapping):
        if _is_secret_key(values.get("name"), names) and isinstance(values.get("value"), str):
            yield values["value"]
        for key, value in values.items():
            if _is_secret_key(key, names) and isinstance(value, str):
                yield value
            else:
                yield from _secret_values(value, names)
    elif isinstance(values, list | tuple):
        for item in values:
            yield from _secret_values(item, names)


def _redact(values: Any, found: set[str], names: set[str]) -> Any:
    if isinstance(values, Mapping):
        pair = _is_secret_key(values.get("name"), names)
        out = {}
        for key, value in values.items():
            hidden = (pair and key == "value") or (_is_secret_key(key, names) and not isinstance(value, Mapping | list))
            out[key] = (REDACTED if value not in (None, "") else value) if hidden else _redact(value, found, names)
        return out
    if isinstance(values, list | tuple):
        return [_redact(item, found, names) for item in values]
    if isinstance(values, str):
        return scrub(values, found)
    return values


def secret_values(environ: Mapping[str, str]) -> set[str]:
    """The values of `environ`'s secret-looking variables and of those FT_SECRETS names."""
    named = set()
    try:
        named = set(parse_references(environ.get(SECRETS_SETTING) or ""))
    except ValueError:
        pass  # reported with the settings
    return {v for k, v in environ.items() if v and (k in named or is_secret_name(k))}


# -- the job's log lines ---------------------------------------------------------------------------

_known: set[str] = set()
_lock = threading.Lock()
_installed = False


def remember(values: Iterable[str]) -> None:
    """Add secret values that log lines and the failure file must never show (e.g. resolved ones)."""
    with _lock:
        _known.update(v for v in values if v and len(v) >= MIN_SCRUBBED_LENGTH)


def known() -> frozenset[str]:
    """The secret values this process knows of (remember, install_log_scrubber)."""
    with _lock:
        return frozenset(_known)


def install_log_scrubber(environ: Mapping[str, str]) -> None:
    """Scrub every log record this process makes (of any logger, also libraries with handlers of
    their own) of the secrets in `environ` and those remembered later, message and traceback."""
    global _installed
    remember(secret_values(environ))
    with _lock:
        if _installed:
            return
        _installed = True
        make = logging.getLogRecordFactory()

    def scrubbed(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        secrets = known()
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: logging reports it when the record is emitted
            return record
        clean = scrub(message, secrets)
        if clean != message:
            record.msg, record.args = clean, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = scrub(logging.Formatter().formatException(record.exc_info), secrets)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info, secrets)
        return record

    logging.setLogRecordFactory(scrubbed)


# -- FT_SECRETS ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SecretReference:
    """Where one environment variable's value is kept: a Secrets Manager secret (optionally one key
    of its JSON value, a version stage or id) or an SSM parameter."""

    service: str  # "secretsmanager" | "ssm"
    arn: str  # the secret's or parameter's own ARN (what an IAM policy names)
    region: str
    json_key: str | None = None
    version_stage: str | None = None
    version_id: str | None = None


def parse_references(text: str) -> dict[str, str]:
    """{ENV_NAME: ARN text} from FT_SECRETS: `NAME=ARN,NAME=ARN` or a JSON object. Raises
    ValueError saying what is wrong, never showing a value (it may be a secret given by mistake)."""
    text = text.strip()
    if not text:
        return {}
    if text.startswith("{"):
        try:
            pairs = json.loads(text)
        except ValueError:
            raise ValueError("is not valid JSON (its text is not shown, in case it holds a secret)") from None
        if not all(isinstance(v, str) for v in pairs.values()):
            raise ValueError('each value of the JSON object must be an ARN text, e.g. {"HF_TOKEN": "arn:aws:..."}')
        return dict(pairs)
    out: dict[str, str] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, arn = item.partition("=")
        if not sep:
            raise ValueError(f"expected NAME=ARN pairs separated by commas, e.g. {EXAMPLE}")
        if name.strip() in out:
            raise ValueError(f"{name.strip()} is named twice")
        out[name.strip()] = arn.strip()
    return out


def reference(name: str, arn: str) -> SecretReference:
    """The reference one FT_SECRETS pair makes; ValueError when it is not one."""
    if not ENV_NAME.match(name):
        raise ValueError(f"{name!r} is not an environment variable name")
    if name.upper().startswith("FT_"):
        raise ValueError(f"{name}: FT_* names are settings, read before secrets are; secrets go to other variables")
    if name.upper().startswith("AWS_"):
        raise ValueError(f"{name}: the job's AWS credentials and configuration come from its role, not from secrets")
    if found := SECRETSMANAGER_ARN.match(arn):
        return SecretReference(
            "secretsmanager",
            found["arn"],
            found["region"],
            found["json_key"] or None,
            found["version_stage"] or None,
            found["version_id"] or None,
        )
    if found := SSM_ARN.match(arn):
        return SecretReference("ssm", found["arn"], found["region"])
    raise ValueError(
        f"{name}: expected the ARN of a Secrets Manager secret (arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME) "
        "or of an SSM parameter (arn:aws:ssm:REGION:ACCOUNT:parameter/NAME); the value is not shown, in case it is "
        "the secret itself"
    )


def references(text: str | None) -> dict[str, SecretReference]:
    """FT_SECRETS parsed and checked; ValueError listing every problem (one per line)."""
    problems, out = [], {}
    for name, arn in parse_references(text or "").items():
        try:
            out[name] = reference(name, arn)
        except ValueError as exc:
            problems.append(str(exc))
    if problems:
        raise ValueError("\n".join(problems))
    return out


def reference_problems(text: str | None, label: str = SECRETS_SETTING) -> list[str]:
    """The settings problems with an FT_SECRETS value, each naming `label`."""
    try:
        references(text)
    except ValueError as exc:
        return [f"{label}: {line}" for line in str(exc).splitlines()]
    return []
