"""The CodeBuild buildspec: structure, order of the gates, and that every command is valid bash."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def spec() -> dict:
    return yaml.safe_load((REPO / "buildspec.yml").read_text())


def commands(spec: dict, phase: str) -> list[str]:
    return spec["phases"][phase]["commands"]


def all_commands(spec: dict) -> list[tuple[str, str]]:
    return [(phase, cmd) for phase in spec["phases"] for cmd in commands(spec, phase)]


def index_of(cmds: list[str], needle: str) -> int:
    hits = [i for i, cmd in enumerate(cmds) if needle in cmd]
    assert hits, f"no command contains {needle!r}"
    return hits[0]


def test_version_and_phases(spec):
    # 0.2 runs a phase's commands in one shell, so IMAGE_URI set in pre_build is seen later.
    assert spec["version"] == 0.2
    assert list(spec["phases"]) == ["install", "pre_build", "build", "post_build"]
    assert spec["env"]["shell"] == "bash"


def test_gates_abort_before_the_image_is_built(spec):
    for phase in ("install", "pre_build", "build"):
        assert spec["phases"][phase]["on-failure"] == "ABORT", phase
    pre = commands(spec, "pre_build")
    for gate in ("hadolint Dockerfile", "pytest", "terraform fmt -check", "validate", "terraform -chdir"):
        index_of(pre, gate)
    assert any(cmd.rstrip().endswith(" test") and "terraform" in cmd for cmd in pre), "terraform test"
    assert index_of(pre, "init") < index_of(pre, "validate")
    assert '-m "not slow"' in pre[index_of(pre, "pytest")]
    assert not any("docker build" in cmd for cmd in pre + commands(spec, "install"))


def test_torch_cpu_build_is_installed_before_the_project(spec):
    install = commands(spec, "install")
    torch_at = index_of(install, "$TORCH_REQUIREMENT")
    assert "--index-url" in install[torch_at]
    assert torch_at < index_of(install, '".[test]"')


def test_image_is_tagged_with_the_commit_and_built_with_cache(spec):
    pre = commands(spec, "pre_build")
    assert 'IMAGE_TAG="$CODEBUILD_RESOLVED_SOURCE_VERSION"' in pre
    assert 'IMAGE_URI="$ECR_REPOSITORY_URL:$IMAGE_TAG"' in pre
    login = pre[index_of(pre, "docker login")]
    assert "aws ecr get-login-password" in login and "--password-stdin" in login
    build = commands(spec, "build")[index_of(commands(spec, "build"), "docker build")]
    assert '--cache-from "$ECR_REPOSITORY_URL:latest"' in build
    assert "BUILDKIT_INLINE_CACHE=1" in build
    assert '--tag "$IMAGE_URI"' in build


def test_push_only_after_a_successful_build(spec):
    post = commands(spec, "post_build")
    guard = index_of(post, "CODEBUILD_BUILD_SUCCEEDING")
    push = index_of(post, 'docker push "$IMAGE_URI"')
    assert guard < push
    latest = post[index_of(post, ":latest")]
    assert '[ "$BRANCH" = main ]' in latest


def test_smoke_job_is_a_guarded_finetune_submit_batch(spec):
    post = commands(spec, "post_build")
    smoke = post[index_of(post, "finetune submit batch")]
    assert '[ -n "$SMOKE_JOB_QUEUE" ]' in smoke and '[ "$BRANCH" = main ]' in smoke
    assert '--job-queue "$SMOKE_JOB_QUEUE"' in smoke and "--wait" in smoke
    assert index_of(post, "finetune submit batch") > index_of(post, 'docker push "$IMAGE_URI"')
    assert spec["env"]["variables"]["SMOKE_JOB_QUEUE"] == "", "smoke jobs are opt-in"


def test_every_command_is_valid_bash(spec):
    for phase, cmd in all_commands(spec):
        result = subprocess.run(["bash", "-n", "-c", cmd], capture_output=True, text=True)
        assert result.returncode == 0, f"{phase}: {cmd!r}: {result.stderr}"


def test_no_secrets_or_account_ids_in_the_buildspec():
    text = (REPO / "buildspec.yml").read_text()
    for marker in ("AKIA", "aws_secret_access_key", ".dkr.ecr."):
        assert marker not in text
