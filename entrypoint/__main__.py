"""`finetune`: the command. `train` is the job, read top to bottom in `train()`; `main()` is the
only place exceptions become exit codes (errors.EXIT_CODES)."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Mapping

from . import checkpoints, errors, reporting, runtime as platform, storage
from .errors import ExitCode, FinetuneError, Interrupted

log = logging.getLogger("finetune")


def train(environ: Mapping[str, str], started: float) -> dict:
    """The job: settings → platform → checkpoint → data → model → Trainer → outputs."""
    from . import adapters, data, distributed, interruption, modeling, outputs, settings as config, tasks, training, workspace

    quiet_libraries()
    runtime = platform.detect(environ, platform.read_platform_files(environ))
    settings = config.load_settings(environ, runtime)
    logging.getLogger().setLevel(settings.log_level)
    log.info("platform: %s; task: %s", runtime.describe(), settings.task)
    plan = distributed.launch_plan(runtime, settings.num_processes, distributed.visible_gpus(), environ)
    if plan is not None:  # several processes: this one launches them (each runs this function) and waits
        distributed.launch(plan)
        return {}
    distributed.close_at_exit()  # this process may join a process group (the Trainer's)
    task = tasks.get(settings.task)
    stop = interruption.StopRequest()
    interruption.install_signal_handlers(stop)
    poller = interruption.start_spot_poller(stop, environ, runtime, settings.spot_notice_poll_seconds)
    with distributed.one_at_a_time(settings.work_dir):  # this machine's processes share FT_WORK_DIR
        work = workspace.prepare(settings.work_dir)
    args = training.training_arguments(settings, work.checkpoints, workspace.has_cuda(), task.seq2seq_arguments, task.metric_for_best_model)
    distributed.require_data_parallel(args)
    store = storage.open_store(config.checkpoint_uri(settings), settings.transfer_concurrency)
    generation = distributed.on_main(checkpoints.claim_generation, store, runtime.describe())
    resumed_step, resumed_dir = distributed.on_local_main(checkpoints.restore, store, work.checkpoints, settings.transfer_concurrency) or (None, None)
    interruption.check_stop(stop, "after restoring the checkpoint", distributed.all_max)
    prepared = distributed.in_turn(lambda: task.prepare(data.load_splits(settings, work.root, task.columns(settings)), settings))
    model_dir = distributed.on_local_main(modeling.fetch_model, settings.model, work.root, settings.transfer_concurrency)
    tokenizer = modeling.load_tokenizer(model_dir, settings.model)
    model = task.load_model(model_dir, settings.model, prepared.info, settings, args.seed)
    model = adapters.apply(model, settings)
    train_ds = task.tokenize(prepared.train, tokenizer, settings, prepared.info)
    eval_ds = task.tokenize(prepared.eval, tokenizer, settings, prepared.info) if prepared.eval is not None else None
    interruption.check_stop(stop, "before training", distributed.all_max)
    sync = checkpoints.CheckpointSync(store, work.staging, generation, settings.checkpoint_keep_last,
                                     settings.transfer_concurrency, separate_process=True) if distributed.is_main() else None
    stopper, clock = interruption.StopOnRequest(stop, distributed.all_max), training.RunClock(started)
    tensorboard = training.SyncTensorBoard(work.root / "tensorboard", config.tensorboard_uri(settings, runtime))
    callbacks = [distributed.AllSaved(), training.SyncCheckpoints(sync), stopper, training.MetricLines(), clock, tensorboard, *training.extra_callbacks(settings)]
    trainer = training.build_trainer(task, settings, prepared.info, args, model, tokenizer, train_ds, eval_ds, callbacks)
    tensorboard.attach(trainer)
    trainer.train(resume_from_checkpoint=str(resumed_dir) if resumed_dir else None)
    if poller:
        poller.close()
    figures = distributed.on_main(end_attempt, sync, store, stop, stopper, clock.first_step_s, resumed_step, generation)
    if stopper.stopped_at_step is not None:
        interruption.raise_interrupted(stop, figures)
    metrics = trainer.evaluate() if eval_ds is not None else {}
    saved = outputs.save_model(trainer, distributed.per_process(work.output), settings.merge_adapter)  # collective when sharded
    if not distributed.is_main():
        return metrics
    totals = interruption.run_totals(checkpoints.attempt_history(store), generation, figures)
    metrics.update(global_step=trainer.state.global_step, resumed_from_step=resumed_step, **figures, **{f"run_{k}": v for k, v in totals.items()})
    print(reporting.format_metrics(metrics), flush=True)
    where = outputs.publish(saved, metrics, settings.output_uri, settings.transfer_concurrency)
    log.info("done: step %d, model and metrics.json at %s", trainer.state.global_step, where)
    return metrics


def end_attempt(sync, store, stop, stopper, first_step_s, resumed_step, generation) -> dict:
    """The main process's end of training: its checkpoint uploads finished, the preemption
    figures printed, and an interrupted attempt's ending recorded; returns the figures."""
    from . import interruption

    sync.wait()
    sync.close()
    figures = interruption.accounting(stop, stopper, sync.stats, first_step_s, resumed_step, generation)
    print(reporting.format_metrics(figures), flush=True)
    if sync.superseded:
        raise errors.WorldError(f"a newer attempt of this job took over {store.uri}; this attempt stopped")
    if stopper.stopped_at_step is not None:
        checkpoints.record_attempt_end(store, generation, "interrupted", figures)
    return figures


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
            rt.sagemaker.failure_file.write_text(message[:1024])
    except Exception:  # noqa: BLE001 - best effort: the exit code already tells the failure
        log.debug("could not write the failure file", exc_info=True)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="finetune", description="Fine-tune Hugging Face models as spot-resilient batch jobs. Settings come from FT_* environment variables (see README).")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("train", help="run the fine-tuning job (SageMaker starts containers with `train`)")
    sub.add_parser("tune", help="Optuna search over the job's settings (FT_TUNE_*); tune.json and optuna.db at FT_OUTPUT_URI")
    sub.add_parser("submit", help="launch the job on AWS Batch or SageMaker (`finetune submit --help`)", add_help=False)
    codes = sub.add_parser("exit-codes", help="print the exit-code table and the AWS Batch retry rules")
    codes.add_argument("--json", action="store_true", help="as JSON")
    sub.add_parser("settings", help="print the job's own settings as a markdown table (TrainingArguments fields are settings too)")
    return p


def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    environ = dict(os.environ) if environ is None else environ
    started = time.monotonic()
    # [rank1] starts each line when torchrun started this process among several
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=platform.log_format(environ))
    if argv[:1] == ["submit"]:
        command, rest = "submit", argv[1:]
    else:
        args = parser().parse_args(argv)
        command, rest = args.command, []
    try:
        if command == "train":
            train(environ, started)
        elif command == "tune":
            from . import tune

            quiet_libraries()
            tune.run(environ, started)
        elif command == "submit":
            from . import submit

            return submit.main(rest, environ)
        elif command == "exit-codes":
            return print_exit_codes(args.json)
        elif command == "settings":
            return print_settings()
        return ExitCode.OK
    except Interrupted as exc:
        log.warning("%s", exc)
        return exc.exit_code
    except FinetuneError as exc:
        # The user's and the world's errors: the message says what to do; no traceback.
        log.error("%s", exc)
        write_failure_file(environ, str(exc))
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001 - top boundary: anything unexpected is logged in full
        log.error("unexpected error:\n%s", traceback.format_exc())
        write_failure_file(environ, f"unexpected error: {exc!r}")
        return ExitCode.UNEXPECTED


def print_settings() -> int:
    from .settings import settings_table

    print("| variable | default | meaning |\n|---|---|---|")
    for name, default, meaning in settings_table():
        print(f"| `{name}` | {default} | {meaning} |")
    return ExitCode.OK


def markdown_exit_codes() -> str:
    rows = [f"| {d.code} | `{d.name}` | {'yes' if d.retried else 'no'} | {d.meaning} |" for d in errors.EXIT_CODES]
    return "\n".join(["| code | name | retried by Batch | meaning |", "|---|---|---|---|", *rows])


def print_exit_codes(as_json: bool) -> int:
    if as_json:
        table = [{"code": d.code, "name": d.name, "meaning": d.meaning, "retried": d.retried} for d in errors.EXIT_CODES]
        print(json.dumps({"exit_codes": table, "batch_retry_rules": errors.retry_rules_json()}, indent=2))
    else:
        print(markdown_exit_codes())
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
