"""The one redaction rule (config/sensitive.py): which names hold secrets, in both directions,
redacting mappings, scrubbing text and log records, and reading FT_SECRETS without ever showing a
value."""

from __future__ import annotations

import json
import logging

import pytest

from entrypoint.config import sensitive
from entrypoint.config.sensitive import REDACTED

PLANTED = "hf_PLANTEDunitSecret42"
SM_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:hf-token-AbCdEf"
SSM_ARN = "arn:aws:ssm:eu-west-1:123456789012:parameter/team/wandb-key"


@pytest.mark.parametrize(
    "name",
    [
        "FT_HUB_TOKEN",
        "hub_token",
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "AWS_SESSION_TOKEN",
        "AWS_SECRET_ACCESS_KEY",
        "GITHUB_CLIENT_SECRET",
        "WANDB_API_KEY",
        "wandbApiKey",
        "MY_APIKEY",
        "SSH_PRIVATE_KEY",
        "DB_PASSWORD",
        "PG_PASSWD",
        "GOOGLE_APPLICATION_CREDENTIALS",
        "MLFLOW_TRACKING_CREDENTIAL",
        "X-Amz-Security-Token",
    ],
)
def test_names_that_hold_secrets(name):
    assert sensitive.is_secret_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "FT_SECRETS",  # ARNs, no secret
        "average_tokens_across_devices",
        "FT_AVERAGE_TOKENS_ACROSS_DEVICES",
        "include_num_input_tokens_seen",
        "hub_private_repo",
        "TOKENIZERS_PARALLELISM",
        "pad_token_id",
        "eos_token",
        "token_type_ids",
        "AWS_ACCESS_KEY_ID",  # an identifier; submit refuses it as a credential anyway
        "KmsKeyId",
        "MY_KEY",
        "KEY_API",
        "SECRETARY",
    ],
)
def test_names_that_do_not(name):
    assert not sensitive.is_secret_name(name)


def test_of_all_settings_only_hub_token_looks_secret():
    """A setting whose name looked secret would be refused by `finetune submit` and redacted in
    settings.json: the rule must not catch FT_AVERAGE_TOKENS_ACROSS_DEVICES and its kind."""
    from entrypoint.config.settings import setting_names

    assert {name for name in setting_names() if sensitive.is_secret_name(name)} == {"hub_token"}


def test_redact_hides_secret_names_their_values_elsewhere_and_uri_credentials():
    values = {
        "hub_token": PLANTED,
        "hub_model_id": f"org/{PLANTED}",  # the value again under an innocent name
        "model": "https://user:hunter2pass@models.example/tiny",
        "report_to": ["tensorboard", f"x-{PLANTED}"],
        "learning_rate": 3e-5,
        "average_tokens_across_devices": True,
        "empty_token": None,
        "nested": {"environment": [{"name": "WANDB_API_KEY", "value": "wandb-planted-1"}, {"name": "A", "value": "b"}]},
        "note": "wandb-planted-1 again",
    }
    out = sensitive.redact(values)
    text = json.dumps(out)
    for secret in (PLANTED, "hunter2pass", "wandb-planted-1"):
        assert secret not in text, secret
    assert out["hub_token"] == REDACTED and out["empty_token"] is None
    assert out["model"] == f"https://{REDACTED}@models.example/tiny"
    assert out["report_to"][0] == "tensorboard" and out["learning_rate"] == 3e-5
    assert out["average_tokens_across_devices"] is True
    assert out["nested"]["environment"] == [{"name": "WANDB_API_KEY", "value": REDACTED}, {"name": "A", "value": "b"}]
    assert values["hub_token"] == PLANTED  # the input is left alone


def test_redact_takes_extra_names_and_known_values():
    out = sensitive.redact(
        {"odd_field": "x1234567", "other": "has known-secret-9 in it"}, ["known-secret-9"], ["odd_field"]
    )
    assert out == {"odd_field": REDACTED, "other": f"has {REDACTED} in it"}


def test_scrub_leaves_short_values_and_takes_the_longest_first():
    assert sensitive.scrub("testing 1 2", ["testing"]) == "testing 1 2"  # shorter than MIN_SCRUBBED_LENGTH
    assert sensitive.scrub("abcdefgh-ijkl", ["abcdefgh", "abcdefgh-ijkl"]) == REDACTED


def test_secret_values_of_an_environment_include_what_ft_secrets_names():
    environ = {
        "HF_TOKEN": PLANTED,
        "FT_SECRETS": f"DATABASE_URL={SM_ARN}",
        "DATABASE_URL": "postgres://planted-db-value",
        "PATH": "/usr/bin:/bin",
    }
    assert sensitive.secret_values(environ) == {PLANTED, "postgres://planted-db-value"}
    assert sensitive.secret_values({"FT_SECRETS": "broken", "HF_TOKEN": PLANTED}) == {PLANTED}


@pytest.mark.parametrize(
    "text",
    [
        f"HF_TOKEN={SM_ARN},WANDB_API_KEY={SSM_ARN}",
        f" HF_TOKEN = {SM_ARN} , WANDB_API_KEY={SSM_ARN},",
        json.dumps({"HF_TOKEN": SM_ARN, "WANDB_API_KEY": SSM_ARN}),
    ],
)
def test_ft_secrets_comma_separated_or_json(text):
    refs = sensitive.references(text)
    assert refs["HF_TOKEN"] == sensitive.SecretReference("secretsmanager", SM_ARN, "us-east-1")
    assert refs["WANDB_API_KEY"] == sensitive.SecretReference("ssm", SSM_ARN, "eu-west-1")


def test_ft_secrets_takes_batch_style_json_key_and_version():
    ref = sensitive.references(f"HF_TOKEN={SM_ARN}:token:AWSPREVIOUS:")["HF_TOKEN"]
    assert (ref.arn, ref.json_key, ref.version_stage, ref.version_id) == (SM_ARN, "token", "AWSPREVIOUS", None)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"HF_TOKEN={PLANTED}", "HF_TOKEN: expected the ARN of a Secrets Manager secret"),
        (json.dumps({"HF_TOKEN": PLANTED}), "HF_TOKEN: expected the ARN"),
        (PLANTED, "expected NAME=ARN pairs"),
        ("{" + PLANTED, "is not valid JSON"),
        (f"FT_HUB_TOKEN={SM_ARN}", "FT_HUB_TOKEN: FT_* names are settings"),
        (f"AWS_SECRET_ACCESS_KEY={SM_ARN}", "come from its role"),
        (f"1BAD={SM_ARN}", "'1BAD' is not an environment variable name"),
        (f"A={SM_ARN},A={SSM_ARN}", "A is named twice"),
    ],
)
def test_ft_secrets_problems_never_show_the_value(text, expected):
    problems = sensitive.reference_problems(text)
    assert problems and problems[0].startswith("FT_SECRETS: ") and expected in "\n".join(problems)
    assert PLANTED not in "\n".join(problems)


def test_an_ft_secrets_problem_is_a_settings_problem_that_does_not_show_the_value():
    from entrypoint.config.platform import Runtime
    from entrypoint.config.settings import load_settings
    from entrypoint.errors import SettingsError

    environ = {"FT_MODEL": "m", "FT_TRAIN_DATA": "d", "FT_SECRETS": f"HF_TOKEN={PLANTED}"}
    with pytest.raises(SettingsError) as info:
        load_settings(environ, Runtime("local"))
    assert "FT_SECRETS: HF_TOKEN: expected the ARN" in str(info.value) and PLANTED not in str(info.value)
    ok = load_settings({**environ, "FT_SECRETS": f"HF_TOKEN={SM_ARN}"}, Runtime("local"))
    assert ok.secrets == f"HF_TOKEN={SM_ARN}"


@pytest.fixture
def scrubbed_logs(monkeypatch):
    """The log scrubber installed in this process for one test, then taken out again."""
    factory = logging.getLogRecordFactory()
    monkeypatch.setattr(sensitive, "_installed", False)
    monkeypatch.setattr(sensitive, "_known", set())
    yield
    logging.setLogRecordFactory(factory)


def test_log_records_of_any_logger_are_scrubbed(scrubbed_logs, capsys):
    sensitive.install_log_scrubber({"HF_TOKEN": PLANTED, "AWS_SESSION_TOKEN": "testing"})
    sensitive.remember(["resolved-secret-value"])
    library = logging.getLogger("a_library_with_its_own_handler")  # as transformers sets itself up
    handler = logging.StreamHandler()
    library.addHandler(handler)
    library.propagate = False
    try:
        library.warning("token %s and %s, session testing", PLANTED, "resolved-secret-value")
        try:
            raise RuntimeError(f"failed with {PLANTED}")
        except RuntimeError:
            library.exception("with the traceback")
    finally:
        library.removeHandler(handler)
    err = capsys.readouterr().err
    assert PLANTED not in err and "resolved-secret-value" not in err
    assert f"token {REDACTED} and {REDACTED}, session testing" in err  # short values are left
    assert f"RuntimeError: failed with {REDACTED}" in err


def test_the_failure_file_is_scrubbed_before_it_is_cut(scrubbed_logs, tmp_path):
    from entrypoint.__main__ import write_failure_file

    (tmp_path / "input" / "config").mkdir(parents=True)
    (tmp_path / "input" / "config" / "hyperparameters.json").write_text("{}")
    environ = {"SAGEMAKER_BASE_DIR": str(tmp_path), "TRAINING_JOB_NAME": "job", "HF_TOKEN": PLANTED}
    sensitive.install_log_scrubber(environ)
    write_failure_file(environ, "x" * 1000 + f" the Hub refused {PLANTED}")  # the cut at 1024 halves it
    written = (tmp_path / "output" / "failure").read_text()
    assert written.startswith("x" * 1000 + " the Hub refused (") and PLANTED[:7] not in written
