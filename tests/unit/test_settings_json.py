"""settings.json (job/outputs.py): the settings a job ran with, next to its model, secrets redacted,
readable back as an FT_CONFIG file."""

import json

from entrypoint.config.platform import Runtime
from entrypoint.config.sensitive import REDACTED
from entrypoint.config.settings import load_settings
from entrypoint.job import outputs

BASE = {"FT_MODEL": "s3://b/m/", "FT_TRAIN_DATA": "s3://b/t.csv"}


def test_settings_json_holds_the_job_settings_and_the_trainer_ones_set_with_secrets_redacted(tmp_path):
    environ = {
        **BASE,
        "FT_HUB_TOKEN": "hf_planted_secret",
        "FT_LEARNING_RATE": "3e-5",
        "FT_AVERAGE_TOKENS_ACROSS_DEVICES": "true",  # "tokens", not a token: kept
    }
    settings = load_settings(environ, Runtime("local"))
    path = outputs.write_settings(tmp_path, settings)
    record = json.loads(path.read_text())
    assert "hf_planted_secret" not in path.read_text()
    assert record["hub_token"] == REDACTED
    assert record["average_tokens_across_devices"] is True
    assert record["learning_rate"] == 3e-5
    assert record["lora_dropout"] == 0.05 and record["eval_data"] is None  # job settings, defaults included
    assert "weight_decay" not in record  # a TrainingArguments field left unset

    again = load_settings({"FT_CONFIG": str(path)}, Runtime("local"))  # it reads back as FT_CONFIG
    assert again.model_dump(exclude={"hub_token", "config"}) == settings.model_dump(exclude={"hub_token", "config"})
