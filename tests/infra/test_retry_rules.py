"""The Batch retry rules that Terraform reads are the exit-code table of entrypoint/errors.py."""

from __future__ import annotations

import json

from entrypoint.errors import retry_rules_json
from tests.infra.terraform_support import TERRAFORM_DIR

RETRY_RULES_FILE = TERRAFORM_DIR / "modules" / "batch" / "retry_rules.json"
REGENERATE = (
    'python -c "import json,entrypoint.errors as e; '
    'print(json.dumps(e.retry_rules_json(), indent=2))" > infra/terraform/modules/batch/retry_rules.json'
)


def test_retry_rules_file_is_the_exit_code_table():
    committed = json.loads(RETRY_RULES_FILE.read_text())
    assert committed == retry_rules_json(), f"retry_rules.json is stale; regenerate it: {REGENERATE}"


def test_retry_rules_fit_batch_limits():
    rules = retry_rules_json()
    assert 1 <= len(rules) <= 5, "AWS Batch accepts at most 5 evaluateOnExit rules"
    for rule in rules:
        assert rule["action"] in {"RETRY", "EXIT"}
        assert {"on_exit_code", "on_status_reason", "on_reason"} & rule.keys(), rule
