"""`finetune submit` runs from a light install (boto3 and pydantic, no torch or transformers): CI
submits jobs without installing the training stack."""

import json
import os
import subprocess
import sys
import textwrap

from entrypoint.config import settings

HEAVY = ("torch", "transformers", "datasets", "accelerate", "peft", "pandas", "pyarrow", "safetensors", "numpy")


def test_the_shipped_training_argument_names_are_the_installed_transformers():
    shipped = json.loads(settings.TRAINING_ARGUMENT_NAMES_FILE.read_text())
    assert shipped["names"] == settings.all_training_argument_names(), (
        "transformers changed TrainingArguments: regenerate with "
        "`finetune settings --names-json > entrypoint/config/training_argument_names.json`"
    )


def run_without_heavy_packages(code: str) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter where importing any package of the training stack fails."""
    blocker = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {HEAVY!r}:
                    raise ModuleNotFoundError(f"{{name}} is not installed (light install)", name=name)
        sys.meta_path.insert(0, Block())
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FT_")}
    return subprocess.run(
        [sys.executable, "-c", blocker + textwrap.dedent(code)], capture_output=True, text=True, timeout=120, env=env
    )


def test_submit_works_without_the_training_stack():
    done = run_without_heavy_packages("""
        import json, sys
        import entrypoint.submit.command as submit
        code = submit.main(["batch", "--job-queue", "q", "--job-definition", "d", "--job-name", "ft-light",
                            "--set", "FT_MODEL=s3://b/m/", "--set", "FT_LEARNING_RATE=3e-5", "--dry-run"], {})
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "datasets"))
        print(json.dumps({"code": code, "heavy": heavy}))
    """)
    assert done.returncode == 0, done.stderr
    *request, last = done.stdout.strip().splitlines()
    assert json.loads(last) == {"code": 0, "heavy": []}
    environment = {e["name"]: e["value"] for e in json.loads("\n".join(request))["containerOverrides"]["environment"]}
    assert environment["FT_LEARNING_RATE"] == "3e-5"


def test_a_misspelt_trainer_setting_is_caught_without_the_training_stack():
    done = run_without_heavy_packages("""
        from entrypoint.__main__ import main  # the command line, as `finetune submit` runs it
        raise SystemExit(main(["submit", "batch", "--job-queue", "q", "--job-definition", "d",
                               "--set", "FT_MODEL=s3://b/m/", "--set", "FT_LERNING_RATE=3e-5", "--dry-run"], {}))
    """)
    assert done.returncode == 64, done.stderr
    assert "FT_LERNING_RATE is not a setting. Did you mean FT_LEARNING_RATE?" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_blocker_really_blocks():
    """The check above means something only if the training stack cannot be imported there."""
    done = run_without_heavy_packages("import transformers")
    assert done.returncode != 0 and "light install" in done.stderr


def test_submit_in_a_venv_with_only_the_base_dependencies(tmp_path):
    """The real thing: a new venv, `pip install .` (no extras), `finetune submit --dry-run`."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, root], check=True, timeout=600)
    listed = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--format=json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    installed = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert not installed & {"torch", "transformers", "datasets"}, installed
    done = subprocess.run(
        [
            str(venv / "bin" / "finetune"),
            "submit",
            "batch",
            "--job-queue",
            "q",
            "--job-definition",
            "d",
            "--set",
            "FT_MODEL=s3://b/m/",
            "--dry-run",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["jobQueue"] == "q"


def test_train_from_the_light_install_says_what_to_install():
    done = run_without_heavy_packages("""
        from entrypoint.__main__ import main
        raise SystemExit(main(["train"], {"FT_MODEL": "m", "FT_TRAIN_DATA": "d"}))
    """)
    assert done.returncode == 64, done.stderr
    assert "pip install 'finetune[train]'" in done.stderr and "Traceback" not in done.stderr
