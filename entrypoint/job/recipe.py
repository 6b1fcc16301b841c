"""The training job as a recipe: `setup` → `train` → `finish`, with `cleanup` in a `finally`.

One `TrainingJob` is one attempt of the job in this process (the launcher decision is made
before, in the command line). Its phases read as the pipeline; each `_setup_*` prepares one part
and keeps what later phases need on the object. The rank logic is expressed once, through the
collectives: `on_main` (world rank 0 does it, every process gets the result or the failure),
`on_local_main` (each machine's first process), `in_turn` (each process of a machine in turn)
and `agree` (a flag set on any process is set on all). With one process they are plain calls.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from entrypoint import reporting, tasks
from entrypoint.config import settings as config
from entrypoint.config.platform import Runtime
from entrypoint.config.settings import JobSettings
from entrypoint.durability import accounting, attempts, checkpoints, interruption, upload_process
from entrypoint.durability.sync import CheckpointSync
from entrypoint.errors import WorldError
from entrypoint.io import storage
from entrypoint.job import adapters, callbacks, data, modeling, outputs, training, workspace
from entrypoint.parallel.collectives import all_max as agree
from entrypoint.parallel.collectives import in_turn, is_main, on_local_main, on_main, per_process, require_data_parallel

log = logging.getLogger("finetune")


class TrainingJob:
    """One attempt of the fine-tuning job in this process."""

    def __init__(self, environ: Mapping[str, str], runtime: Runtime, settings: JobSettings, started: float):
        self.environ, self.runtime, self.settings, self.started = environ, runtime, settings, started
        self.task = tasks.get(settings.task)
        self.stop = interruption.StopRequest()
        self.poller: interruption.SpotNoticePoller | None = None
        self.sync: CheckpointSync | None = None
        self.resumed_step: int | None = None
        self.resumed_dir: Path | None = None

    def run(self) -> dict:
        """The whole attempt; the metrics of the finished job (an interrupted one raises)."""
        try:
            self.setup()
            self.train()
            return self.finish()
        finally:
            self.cleanup()

    # -- setup --------------------------------------------------------------------------------

    def setup(self) -> None:
        self.setup_signals()
        self.setup_workspace()
        self._setup_attempt()
        self._setup_restore()
        interruption.check_stop(self.stop, "after restoring the checkpoint", agree)
        self.setup_data()
        self.setup_model_files()
        self._setup_model()
        interruption.check_stop(self.stop, "before training", agree)

    def setup_signals(self) -> None:
        """SIGTERM/SIGINT and the spot notice raise a flag; callbacks act on it at step boundaries."""
        interruption.install_signal_handlers(self.stop)
        self.poller = interruption.start_spot_poller(
            self.stop, self.environ, self.runtime, self.settings.spot_notice_poll_seconds
        )

    def setup_workspace(self) -> None:
        with workspace.one_at_a_time(self.settings.work_dir):  # this machine's processes share FT_WORK_DIR
            self.work = workspace.prepare(self.settings.work_dir)
        self.args = training.arguments_for(self.settings, self.task, self.work.checkpoints)

    def _setup_attempt(self) -> None:
        """Claim this attempt's number at the checkpoint location (fencing out stale attempts)."""
        require_data_parallel(self.args)
        self.store = storage.open_store(config.checkpoint_uri(self.settings), self.settings.transfer_concurrency)
        self.generation = on_main(attempts.claim_generation, self.store, self.runtime.describe())

    def _setup_restore(self) -> None:
        restored = on_local_main(
            checkpoints.restore, self.store, self.work.checkpoints, self.settings.transfer_concurrency
        )
        self.resumed_step, self.resumed_dir = restored or (None, None)

    def setup_data(self) -> None:
        settings, task = self.settings, self.task
        self.prepared = in_turn(
            lambda: task.prepare(data.load_splits(settings, self.work.root, task.columns(settings)), settings)
        )

    def setup_model_files(self) -> None:
        self.model_dir = on_local_main(
            modeling.fetch_model, self.settings.model, self.work.root, self.settings.transfer_concurrency
        )
        self.tokenizer = modeling.load_tokenizer(self.model_dir, self.settings.model)

    def _setup_model(self) -> None:
        settings, task, info = self.settings, self.task, self.prepared.info
        model = task.load_model(self.model_dir, settings.model, info, settings, self.args.seed)
        self.model = adapters.apply(model, settings)
        self.train_ds = task.tokenize(self.prepared.train, self.tokenizer, settings, info)
        self.eval_ds = task.tokenize(self.prepared.eval, self.tokenizer, settings, info) if self.prepared.eval else None

    # -- train --------------------------------------------------------------------------------

    def train(self) -> None:
        settings = self.settings
        if is_main():  # world rank 0 alone writes to the checkpoint location
            self.sync = CheckpointSync(
                self.store,
                self.work.staging,
                self.generation,
                settings.checkpoint_keep_last,
                settings.transfer_concurrency,
                uploader=upload_process.start(),
            )
        self.stopper = interruption.StopOnRequest(self.stop, agree)
        self.clock = callbacks.RunClock(self.started)
        tensorboard = callbacks.SyncTensorBoard(
            self.work.root / "tensorboard", config.tensorboard_uri(settings, self.runtime)
        )
        self.trainer = training.build_trainer(
            self.task,
            settings,
            self.prepared.info,
            self.args,
            self.model,
            self.tokenizer,
            self.train_ds,
            self.eval_ds,
            [
                callbacks.AllSaved(),
                callbacks.SyncCheckpoints(self.sync),
                self.stopper,
                callbacks.MetricLines(),
                self.clock,
                tensorboard,
                *callbacks.extra_callbacks(settings),
            ],
        )
        tensorboard.attach(self.trainer)
        self.trainer.train(resume_from_checkpoint=str(self.resumed_dir) if self.resumed_dir else None)

    # -- finish -------------------------------------------------------------------------------

    def finish(self) -> dict:
        """Uploads finished and the attempt accounted for; an interrupted attempt ends here (143/130).
        Otherwise: evaluate, save, and publish the model with metrics.json."""
        figures = on_main(self._end_attempt)
        if self.stopper.stopped_at_step is not None:
            interruption.raise_interrupted(self.stop, figures)
        metrics: dict[str, Any] = self.trainer.evaluate() if self.eval_ds is not None else {}
        saved = outputs.save_model(self.trainer, per_process(self.work.output), self.settings.merge_adapter)
        if not is_main():
            return metrics
        step = self.trainer.state.global_step
        totals = accounting.run_totals(attempts.attempt_history(self.store), self.generation, figures)
        metrics.update(
            global_step=step,
            resumed_from_step=self.resumed_step,
            **figures,
            **{f"run_{k}": v for k, v in totals.items()},
        )
        print(reporting.format_metrics(metrics), flush=True)
        where = outputs.publish(saved, metrics, self.settings.output_uri, self.settings.transfer_concurrency)
        log.info("done: step %d, model and metrics.json at %s", step, where)
        return metrics

    def _end_attempt(self) -> dict:
        """The main process's end of training: its uploads finished, the preemption figures
        printed, and an interrupted attempt's ending recorded; returns the figures."""
        assert self.sync is not None  # the main process always has one
        self.sync.wait()
        self.sync.close()
        figures = accounting.accounting(
            self.stop, self.stopper, self.sync.stats, self.clock.first_step_s, self.resumed_step, self.generation
        )
        print(reporting.format_metrics(figures), flush=True)
        if self.sync.superseded:
            raise WorldError(f"a newer attempt of this job took over {self.store.uri}; this attempt stopped")
        if self.stopper.stopped_at_step is not None:
            attempts.record_attempt_end(self.store, self.generation, "interrupted", figures)
        return figures

    # -- cleanup ------------------------------------------------------------------------------

    def cleanup(self) -> None:
        """Runs whatever happened: no poller thread or upload process outlives the attempt."""
        if self.poller is not None:
            self.poller.close()
        if self.sync is not None:
            self.sync.close()
