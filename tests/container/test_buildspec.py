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
    assert torch_at < index_of(install, '".[train,test]"')


def test_image_is_tagged_with_the_commit_only(spec):
    pre = commands(spec, "pre_build")
    assert 'IMAGE_TAG="$CODEBUILD_RESOLVED_SOURCE_VERSION"' in pre
    assert 'IMAGE_URI="$ECR_REPOSITORY_URL:$IMAGE_TAG"' in pre
    login = pre[index_of(pre, "docker login")]
    assert "aws ecr get-login-password" in login and "--password-stdin" in login
    build = commands(spec, "build")[index_of(commands(spec, "build"), "docker build")]
    assert '--tag "$IMAGE_URI"' in build and build.count("--tag") == 1
    assert "BUILDKIT_INLINE_CACHE=1" in build, "the pushed image carries cache metadata for the next commit"
    # The repository's tags are immutable (modules/storage): a moving tag could be pushed once only.
    for phase, cmd in all_commands(spec):
        assert ":latest" not in cmd and "docker tag" not in cmd, f"{phase}: {cmd!r}"


def test_push_only_after_a_successful_build(spec):
    post = commands(spec, "post_build")
    guard = index_of(post, "CODEBUILD_BUILD_SUCCEEDING")
    push = index_of(post, 'docker push "$IMAGE_URI"')
    assert guard < push
    assert sum("docker push" in cmd for _, cmd in all_commands(spec)) == 1


def test_smoke_job_is_a_guarded_finetune_submit_batch(spec):
    post = commands(spec, "post_build")
    smoke = post[index_of(post, "finetune submit batch")]
    assert '[ -n "$SMOKE_JOB_QUEUE" ]' in smoke and '[ "$BRANCH" = main ]' in smoke
    assert '--job-queue "$SMOKE_JOB_QUEUE"' in smoke and "--wait" in smoke
    assert '--image "$IMAGE_URI"' in smoke, "the smoke job runs the image this build pushed"
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


# --- the publishing commands, run in bash with aws, docker and finetune stubbed ----------------

STUB = """#!/bin/bash
echo "$(basename "$0") $*" >> "$CALLS"
case "$(basename "$0") $1 $2" in
  "aws ecr get-login-password") echo password ;;
  "aws ecr batch-get-image")
    for arg in "$@"; do case "$arg" in imageTag=*) tag="${arg#imageTag=}" ;; esac; done
    if grep -qx "$tag" "$ECR_TAGS" 2>/dev/null; then echo 1; else echo 0; fi ;;
esac
"""


def git(cwd: Path, *args: str) -> str:
    env = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
        "HOME": str(cwd),
        "PATH": "/usr/bin:/bin",
    }
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def checkouts(tmp_path_factory) -> dict[str, Path]:
    """A clone with history (two commits) and a shallow clone of it, as CodeBuild may give."""
    if not shutil.which("git"):
        pytest.skip("git is not installed")
    root = tmp_path_factory.mktemp("src")
    full = root / "full"
    full.mkdir()
    git(full, "init", "-q", "-b", "main")
    for n in (1, 2):
        (full / "f").write_text(str(n))
        git(full, "add", "f")
        git(full, "commit", "-q", "-m", str(n))
    git(root, "clone", "-q", "--depth", "1", f"file://{full}", "shallow")
    return {"full": full, "shallow": root / "shallow"}


def publish(
    spec: dict,
    tmp_path: Path,
    cwd: Path,
    *,
    ecr_tags: list[str],
    branch: str = "main",
    smoke_queue: str = "",
    succeeding: str = "1",
) -> list[str]:
    """Run pre_build from IMAGE_TAG on, then build and post_build, as CodeBuild would (one bash,
    stop at the first failing command); returns the stubbed calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in ("aws", "docker", "finetune"):
        (bin_dir / name).write_text(STUB)
        (bin_dir / name).chmod(0o755)
    (tmp_path / "tags").write_text("".join(f"{tag}\n" for tag in ecr_tags))
    pre = commands(spec, "pre_build")
    script = pre[index_of(pre, "IMAGE_TAG=") :] + commands(spec, "build") + ["CODEBUILD_BUILD_SUCCEEDING=" + succeeding]
    script += commands(spec, "post_build")
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "CALLS": str(tmp_path / "calls"),
        "ECR_TAGS": str(tmp_path / "tags"),
        "AWS_DEFAULT_REGION": "us-east-1",
        "ECR_REPOSITORY_URL": "123456789012.dkr.ecr.us-east-1.amazonaws.com/finetune",
        "CODEBUILD_RESOLVED_SOURCE_VERSION": git(cwd, "rev-parse", "HEAD"),
        "CODEBUILD_WEBHOOK_HEAD_REF": f"refs/heads/{branch}",
        "SMOKE_JOB_QUEUE": smoke_queue,
        "SMOKE_JOB_DEFINITION": "finetune-smoke",
        "SMOKE_MAX_STEPS": "20",
    }
    text = "\n".join(f"{cmd}\n" + 'status=$?; [ "$status" = 0 ] || exit "$status"' for cmd in script)
    result = subprocess.run(["bash", "-c", text], cwd=cwd, env=env, capture_output=True, text=True)
    calls = (tmp_path / "calls").read_text().splitlines() if (tmp_path / "calls").exists() else []
    assert result.returncode == 0, result.stderr + "\n".join(calls)
    return calls


def builds(calls: list[str]) -> list[str]:
    return [c for c in calls if c.startswith("docker build")]


def pushes(calls: list[str]) -> list[str]:
    return [c for c in calls if c.startswith("docker push")]


def test_a_new_commit_is_pushed_under_its_own_tag_with_the_parents_image_as_cache(spec, checkouts, tmp_path):
    repo = "123456789012.dkr.ecr.us-east-1.amazonaws.com/finetune"
    head, parent = git(checkouts["full"], "rev-parse", "HEAD"), git(checkouts["full"], "rev-parse", "HEAD~1")
    calls = publish(spec, tmp_path, checkouts["full"], ecr_tags=[parent])
    [build] = builds(calls)
    assert f"--cache-from {repo}:{parent}" in build and f"--tag {repo}:{head}" in build
    assert pushes(calls) == [f"docker push {repo}:{head}"]


def test_without_the_parents_image_or_history_there_is_no_registry_cache(spec, checkouts, tmp_path):
    for name in ("full", "shallow"):
        calls = publish(spec, tmp_path / name, checkouts[name], ecr_tags=[])
        [build] = builds(calls)
        assert "--cache-from" not in build, name
        assert len(pushes(calls)) == 1, name


def test_a_rebuild_of_a_commit_already_in_ecr_pushes_nothing(spec, checkouts, tmp_path):
    head = git(checkouts["full"], "rev-parse", "HEAD")
    calls = publish(spec, tmp_path, checkouts["full"], ecr_tags=[head])
    assert builds(calls) and not pushes(calls)


def test_a_failed_build_pushes_nothing_and_fails(spec, checkouts, tmp_path):
    with pytest.raises(AssertionError):
        publish(spec, tmp_path, checkouts["full"], ecr_tags=[], succeeding="0")
    calls = (tmp_path / "calls").read_text().splitlines()
    assert not pushes(calls) and not any(c.startswith("finetune") for c in calls)


def test_smoke_job_runs_on_main_with_the_pushed_image(spec, checkouts, tmp_path):
    repo = "123456789012.dkr.ecr.us-east-1.amazonaws.com/finetune"
    head = git(checkouts["full"], "rev-parse", "HEAD")
    calls = publish(spec, tmp_path / "main", checkouts["full"], ecr_tags=[], smoke_queue="smoke")
    check, smoke = [c for c in calls if c.startswith("finetune ")]
    assert check == "finetune check"  # before paying for the smoke job's instance
    assert f"--image {repo}:{head}" in smoke and "--job-definition finetune-smoke" in smoke
    assert calls.index(smoke) > calls.index(pushes(calls)[0])
    branch = publish(spec, tmp_path / "branch", checkouts["full"], ecr_tags=[], smoke_queue="smoke", branch="feature")
    assert not any(c.startswith("finetune ") for c in branch)
