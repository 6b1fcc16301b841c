"""Terraform checks that need no AWS: formatting, validation, and `terraform test` on mocks."""

from __future__ import annotations

import re

from tests.infra.terraform_support import TERRAFORM_DIR, run_terraform


def test_fmt():
    result = run_terraform(["fmt", "-check", "-recursive", "-diff"], TERRAFORM_DIR)
    assert result.returncode == 0, f"run `terraform fmt -recursive infra/terraform`:\n{result.stdout}{result.stderr}"


def test_validate(example_root):
    result = run_terraform(["validate"], example_root)
    assert result.returncode == 0, result.stdout + result.stderr


def test_terraform_test_on_mock_provider(example_root):
    result = run_terraform(["test"], example_root, timeout_s=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"Success! [1-9]\d* passed, 0 failed", result.stdout), result.stdout


def _blocks(text: str, kind: str) -> dict[str, str]:
    """`kind "name" { ... }` blocks of a Terraform file, by name (brace counting is enough here)."""
    blocks = {}
    for match in re.finditer(rf'^{kind} "([^"]+)" {{', text, flags=re.M):
        depth, i = 0, match.end() - 1
        while True:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                break
            i += 1
        blocks[match.group(1)] = text[match.end() : i]
    return blocks


def test_every_variable_is_typed_and_described():
    files = sorted(TERRAFORM_DIR.rglob("variables.tf"))
    assert len(files) >= 5
    for path in files:
        blocks = _blocks(path.read_text(), "variable")
        assert blocks, path
        for name, body in blocks.items():
            assert re.search(r"^\s*type\s*=", body, flags=re.M), f"{path}: variable {name} has no type"
            assert re.search(r'^\s*description\s*=\s*"\S', body, flags=re.M), (
                f"{path}: variable {name} has no description"
            )


def test_every_output_is_described():
    for path in sorted(TERRAFORM_DIR.rglob("outputs.tf")):
        for name, body in _blocks(path.read_text(), "output").items():
            assert re.search(r'^\s*description\s*=\s*"\S', body, flags=re.M), f"{path}: output {name}"


def test_checkov_skips_give_reasons():
    skips = [
        (path, line)
        for path in TERRAFORM_DIR.rglob("*.tf")
        for line in path.read_text().splitlines()
        if "checkov:skip" in line
    ]
    assert skips, "expected the documented checkov skips"
    for path, line in skips:
        match = re.search(r"#checkov:skip=CKV2?_AWS_\d+:(.*)$", line)
        assert match and len(match.group(1).split()) >= 5, f"{path}: a skip needs a real reason: {line.strip()}"
