"""Settings from a file: FT_CONFIG names a YAML or JSON file (a local path or an S3 URI) that holds
the same settings as the FT_* variables, as a mapping of names without the prefix, in lower or upper
case. The caller reads the file; everything here is pure.

Each value becomes the text an environment variable would hold (true/false, numbers as written, a
mapping as JSON text, a list as a list), so a value from the file is validated exactly like the same
value from FT_*; a null value leaves the setting unset. YAML is parsed with PyYAML (a base dependency:
`finetune submit --config` checks files from the light install too); a `.json` file with the json
module, whose messages point at the line and column.
"""

from __future__ import annotations

import datetime
import difflib
import json
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from entrypoint.errors import SettingsError

CONFIG = "config"  # the setting that names the file: FT_CONFIG, or hyperparameter `config` on SageMaker
PREFIX = "FT_"


def parse(name: str, data: bytes) -> dict[str, Any]:
    """{lower-case setting name: value as an environment variable holds it} from the file `name`;
    SettingsError naming the file when it is not a mapping of settings."""
    is_json = name.lower().endswith(".json")
    try:
        text = data.decode("utf-8-sig")
        loaded = (json.loads(text) if text.strip() else None) if is_json else yaml.safe_load(text)
    except (UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:  # json.JSONDecodeError is a ValueError
        kind = "JSON" if is_json else "YAML"
        raise SettingsError([f"FT_CONFIG {name} is not valid {kind}: {' '.join(str(exc).split())}"]) from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        got = type(loaded).__name__
        raise SettingsError(
            [f"FT_CONFIG {name} must hold a mapping of settings (learning_rate: 3e-5, ...); got a {got}."]
        )
    values: dict[str, Any] = {}
    problems = []
    for key, value in loaded.items():
        setting = str(key).lower()
        if setting in values:
            problems.append(f"FT_CONFIG {name}: {key} is given twice (names are not case-sensitive).")
        if value is not None:
            values[setting] = as_setting_text(value)
    if problems:
        raise SettingsError(problems)
    return values


def as_setting_text(value: Any) -> str | list[str]:
    """The value as an FT_* variable would hold it (lists stay lists: list settings take them)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return json.dumps(value, default=str)
    if isinstance(value, (list, tuple)):
        return [item if isinstance(item, str) else json.dumps(item, default=str) for item in value]
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    return str(value)


def key_problems(name: str, keys: Iterable[str], known: Iterable[str], refused: Mapping[str, str]) -> list[str]:
    """Problems with the setting names in the file `name`, each naming the file and the key;
    `refused`: why a name cannot be set, and the fix."""
    known = sorted(known)
    problems = []
    for key in keys:
        if key == CONFIG:
            problems.append(f"FT_CONFIG {name}: {key} cannot be set in a config file (one file per job).")
        elif key in refused:
            problems.append(f"FT_CONFIG {name}: {key} cannot be set: {refused[key]}.")
        elif key not in known:
            close = difflib.get_close_matches(key.removeprefix(PREFIX.lower()), known, n=1, cutoff=0.75)
            hint = f" Did you mean {close[0]}?" if close else ""
            problems.append(f"FT_CONFIG {name}: {key} is not a setting.{hint}")
    return problems
