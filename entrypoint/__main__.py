"""`finetune`: the command line. `train` launches one process per GPU or runs the job, a recipe
read top to bottom in job/recipe.py; `main()` is the only place exceptions become exit codes
(errors.EXIT_CODES). This module imports no training library at import time: `finetune submit`
runs from the light install (boto3 and pydantic only)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Iterator, Mapping

from entrypoint import errors
from entrypoint.config import platform, sensitive
from entrypoint.errors import ExitCode, FinetuneError, Interrupted, UserError
from entrypoint.io import aws

log = logging.getLogger("finetune")


TRAINING_STACK = ("torch", "transformers", "datasets", "accelerate", "peft", "pandas", "pyarrow", "safetensors")


def train(environ: Mapping[str, str], started: float) -> dict:
    """`finetune train`: launch one process per GPU, or run the job (a recipe) in this one."""
    with training_stack("finetune train"):
        from entrypoint.job.recipe import TrainingJob
        from entrypoint.parallel import collectives, launch

    quiet_libraries()
    runtime, settings = load_settings(environ)
    environ = {**environ, **export_secrets(settings.secrets)}
    log.info("platform: %s; task: %s", runtime.describe(), settings.task)
    plan = launch.launch_plan(runtime, settings.num_processes, launch.visible_gpus(), environ)
    if plan is not None:  # several processes: this one launches them (each runs `finetune train`) and waits
        launch.launch(plan)
        return {}
    collectives.close_at_exit()  # this process may join a process group (the Trainer's)
    return TrainingJob(environ, runtime, settings, started).run()


def tune(environ: Mapping[str, str], started: float) -> dict:
    """`finetune tune`: an Optuna search over the same job's settings."""
    with training_stack("finetune tune"):
        from entrypoint.tune import search

    quiet_libraries()
    runtime, settings = load_settings(environ)
    environ = {**environ, **export_secrets(settings.secrets)}
    return search.run(environ, runtime, settings, started)


@contextlib.contextmanager
def training_stack(command: str) -> Iterator[None]:
    """A light install (`pip install .`, for `finetune submit`) lacks the training libraries."""
    try:
        yield
    except ImportError as exc:
        if (exc.name or "").split(".")[0] not in TRAINING_STACK:
            raise
        raise UserError(
            f"{command} needs the training libraries ({exc.name} is not installed): "
            "pip install 'finetune[train]' (the image has them)"
        ) from exc


def load_settings(environ: Mapping[str, str]):
    """The platform this runs on and the job's validated settings (SettingsError lists every problem)."""
    from entrypoint.config import settings as config
    from entrypoint.io import storage

    runtime = platform.detect(environ, platform.read_platform_files(environ))
    settings = config.load_settings(environ, runtime, storage.read_file)  # FT_CONFIG: a local path or S3 URI
    logging.getLogger().setLevel(settings.log_level)
    return runtime, settings


def export_secrets(spec: str | None) -> dict[str, str]:
    """FT_SECRETS: each secret's value read (Secrets Manager, SSM) into this process's environment,
    where the Hub (HF_TOKEN), W&B (WANDB_API_KEY) and the like read it, before any of them runs;
    every process of the job reads them itself. Returns them; the log names the variables only."""
    from entrypoint.io import secret_store

    references = sensitive.references(spec)  # checked with the settings already
    if not references:
        return {}
    values = secret_store.read(references)
    sensitive.remember(values.values())
    os.environ.update(values)
    log.info("FT_SECRETS: set %s from AWS (values not shown)", ", ".join(sorted(values)))
    return values


def quiet_libraries() -> None:
    """No progress bars: in CloudWatch each redraw becomes a log line."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


def write_failure_file(environ: Mapping[str, str], message: str) -> None:
    """SageMaker shows the contents of /opt/ml/output/failure as the job's FailureReason."""
    try:
        files = platform.read_platform_files(environ)
        rt = platform.detect(environ, files)
        if rt.sagemaker is not None and not rt.sagemaker.failure_file.exists():  # the first failure is the cause
            rt.sagemaker.failure_file.parent.mkdir(parents=True, exist_ok=True)
            # Scrubbed before it is cut: a secret cut in half would no longer be recognised.
            rt.sagemaker.failure_file.write_text(sensitive.scrub(message, sensitive.known())[:1024])
    except Exception:
        log.debug("could not write the failure file", exc_info=True)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="finetune",
        description=(
            "Fine-tune Hugging Face models as spot-resilient batch jobs. Settings come from FT_* environment "
            "variables (see README)."
        ),
    )
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("train", help="run the fine-tuning job (SageMaker starts containers with `train`)")
    sub.add_parser(
        "tune", help="Optuna search over the job's settings (FT_TUNE_*); tune.json and optuna.db at FT_OUTPUT_URI"
    )
    sub.add_parser("submit", help="launch the job on AWS Batch or SageMaker (`finetune submit --help`)", add_help=False)
    sub.add_parser(
        "check",
        help="check the job's settings, inputs and outputs without training, before paying for a GPU "
        "(`finetune check --help`)",
        add_help=False,
    )
    sub.add_parser(
        "status",
        help="where a run stands, from its checkpoint or output location (`finetune status --help`)",
        add_help=False,
    )
    sub.add_parser(
        "report",
        help="build a run's report.html (curves, interruptions, settings) from its checkpoint or output location",
        add_help=False,
    )
    codes = sub.add_parser("exit-codes", help="print the exit-code table and the AWS Batch retry rules")
    codes.add_argument("--json", action="store_true", help="as JSON")
    listing = sub.add_parser(
        "settings", help="print the job's own settings as a markdown table (TrainingArguments fields are settings too)"
    )
    listing.add_argument(
        "--names-json",
        action="store_true",
        help=(
            "print the installed transformers' TrainingArguments names, as "
            "entrypoint/config/training_argument_names.json holds them"
        ),
    )
    listing.add_argument(
        "--trainer-fields",
        action="store_true",
        help="print the TrainingArguments fields finetune refuses or adjusts, and why (config/trainer_fields.py)",
    )
    return p


def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    environ = dict(os.environ) if environ is None else environ
    started = time.monotonic()
    # [rank1] starts each line when torchrun started this process among several
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=platform.log_format(environ))
    aws.quiet_loggers()
    sensitive.install_log_scrubber(environ)
    if argv[:1] in (["submit"], ["status"], ["report"], ["check"]):  # they parse their own arguments
        command, rest = argv[0], argv[1:]
    else:
        args = parser().parse_args(argv)
        command, rest = args.command, []
    try:
        if command == "train":
            train(environ, started)
        elif command == "tune":
            tune(environ, started)
        elif command == "submit":
            from entrypoint.submit import command as submit

            return submit.main(rest, environ)
        elif command == "check":
            from entrypoint.ops import check

            quiet_libraries()
            return check.main(rest, environ)
        elif command == "status":
            from entrypoint.ops import status

            return status.main(rest)
        elif command == "report":
            from entrypoint.ops import report

            return report.main(rest)
        elif command == "exit-codes":
            return print_exit_codes(args.json)
        elif command == "settings":
            return print_settings(args.names_json, args.trainer_fields)
        return ExitCode.OK
    except Interrupted as exc:
        log.warning("%s", exc)
        return exc.exit_code
    except FinetuneError as exc:
        # The user's and the world's errors: the message says what to do; no traceback.
        log.error("%s", exc)
        write_failure_file(environ, str(exc))
        return exc.exit_code
    except Exception as exc:
        log.error("unexpected error:\n%s", traceback.format_exc())
        write_failure_file(environ, f"unexpected error: {exc!r}")
        return ExitCode.UNEXPECTED


def print_settings(names_json: bool = False, trainer_fields: bool = False) -> int:
    from entrypoint.config.settings import all_training_argument_names, settings_table
    from entrypoint.config.trainer_fields import markdown_table

    if trainer_fields:
        print(markdown_table())
        return ExitCode.OK

    if names_json:
        import transformers

        print(json.dumps({"transformers": transformers.__version__, "names": all_training_argument_names()}, indent=1))
        return ExitCode.OK
    print("| variable | default | meaning |\n|---|---|---|")
    for name, default, meaning in settings_table():
        print(f"| `{name}` | {default} | {meaning} |")
    return ExitCode.OK


def markdown_exit_codes() -> str:
    rows = [f"| {d.code} | `{d.name}` | {'yes' if d.retried else 'no'} | {d.meaning} |" for d in errors.EXIT_CODES]
    return "\n".join(["| code | name | retried by Batch | meaning |", "|---|---|---|---|", *rows])


def print_exit_codes(as_json: bool) -> int:
    if as_json:
        table = [
            {"code": d.code, "name": d.name, "meaning": d.meaning, "retried": d.retried} for d in errors.EXIT_CODES
        ]
        print(json.dumps({"exit_codes": table, "batch_retry_rules": errors.retry_rules_json()}, indent=2))
    else:
        print(markdown_exit_codes())
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
