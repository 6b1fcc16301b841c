"""Finding Terraform and the offline AWS provider mirror, and running Terraform in a scratch copy."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TERRAFORM_DIR = REPO / "infra" / "terraform"
EXAMPLE = Path("examples") / "complete"

# Where the AWS provider mirror lies on the build and CI machines, and where Terraform itself
# looks for local plugins; TF_PLUGIN_DIR overrides them all.
PLUGIN_DIR_CANDIDATES = (
    Path("/opt/tf-plugins"),
    Path.home() / ".terraform.d" / "plugins",
    Path("/usr/local/share/terraform/plugins"),
    Path("/usr/share/terraform/plugins"),
)


def terraform_bin() -> str:
    """The terraform executable; missing Terraform is a broken setup, not a reason to skip."""
    exe = os.environ.get("TERRAFORM_BIN") or shutil.which("terraform")
    if not exe:
        raise RuntimeError("terraform is not on PATH (install Terraform >= 1.7, or set TERRAFORM_BIN)")
    return exe


def plugin_dir() -> Path | None:
    """The folder holding registry.terraform.io/hashicorp/aws, or None to let init download."""
    explicit = os.environ.get("TF_PLUGIN_DIR")
    if explicit:
        path = Path(explicit)
        if not (path / "registry.terraform.io" / "hashicorp" / "aws").is_dir():
            raise RuntimeError(f"TF_PLUGIN_DIR={explicit} holds no registry.terraform.io/hashicorp/aws")
        return path
    for path in PLUGIN_DIR_CANDIDATES:
        if (path / "registry.terraform.io" / "hashicorp" / "aws").is_dir():
            return path
    return None


def terraform_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ, TF_IN_AUTOMATION="1", TF_INPUT="0", CHECKPOINT_DISABLE="1")
    env.update(extra or {})
    return env


def run_terraform(
    args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout_s: float = 600
) -> subprocess.CompletedProcess:
    command, *rest = args
    return subprocess.run(
        [terraform_bin(), command, "-no-color", *rest],
        cwd=cwd,
        env=env or terraform_env(),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def copy_tree(dest: Path) -> Path:
    """A scratch copy of infra/terraform (init and apply write lock files and state) -> example root."""
    shutil.copytree(
        TERRAFORM_DIR,
        dest,
        ignore=shutil.ignore_patterns(".terraform", ".terraform.lock.hcl", "*.tfstate", "*.tfstate.backup"),
    )
    return dest / EXAMPLE


def init(root: Path) -> None:
    args = ["init"]
    mirror = plugin_dir()
    if mirror is not None:
        args.append(f"-plugin-dir={mirror}")
    result = run_terraform(args, root, timeout_s=300)
    assert result.returncode == 0, result.stdout + result.stderr
