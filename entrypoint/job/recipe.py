"""The training job as a recipe: `setup` → `train` → `finish`, with `cleanup` in a `finally`.

One `TrainingJob` is one attempt of the job in this process (the launcher decision is made
before, in the command line). Its phases read as the pipeline; each `_setup_*` prepares one part
and keeps what later phases need on the object. The rank logic is expressed once, through the
collectives: `on_main` (world rank 0 does it, every process gets the result or the failure),
`on_local_main` (each machine's first process), `in_turn` (each process of a machine in turn)
and `agree` (a flag set on any process is set on all). With one process they are plain calls.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from entrypoint import reporting, tasks
from entrypoint.config import settings as config
from entrypoint.config.platform import Runtime
from entrypoint.config.settings import JobSettings
from entrypoint.durability import accounting, attempts, checkpoints, interruption, upload_process
from entrypoint.durability.sync import CheckpointSync, share_parts
from entrypoint.errors import WorldError
from entrypoint.io import disk, storage
from entrypoint.job import (
    adapters,
    callbacks,
    modeling,
    outputs,
    prepared,
    run_report,
    sources,
    tracking,
    training,
    workspace,
)
from entrypoint.parallel import cpus
from entrypoint.parallel.collectives import all_max as agree
from entrypoint.parallel.collectives import (
    in_turn,
    is_main,
    node_layout,
    on_local_main,
    on_main,
    per_process,
    require_data_parallel,
)

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
        self.stages = reporting.Stages()
        self.model_source: sources.HubSource | None = None
        self.prepared_hit: bool | None = None

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
        self.setup_model_files()
        self.setup_data()
        with self.stages.timed("model_load"):
            self._setup_model()
        interruption.check_stop(self.stop, "before claiming the attempt", agree)
        # Only now, with the user's inputs all read and checked, does the job write to its
        # checkpoint location: a mistake in them leaves nothing behind.
        self._setup_attempt()
        with self.stages.timed("restore"):
            self._setup_restore()
        if is_main():
            print(reporting.format_metrics(self.stages.metrics()), flush=True)
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
        self.threads = cpus.apply_for(self.environ, self.runtime, self.settings)  # torch's threads, before any work
        self.args = training.arguments_for(
            self.settings, self.task, self.work.checkpoints, self.threads.dataloader_workers
        )
        self.layout = node_layout()  # the job's machines (the Trainer's arguments started the process group)
        # Every location the job will write to, tried now: a missing bucket or a refused write is
        # the user's error before any download, not a failure (and a retried job) after training.
        on_main(storage.check_writable, config.write_locations(self.settings, self.runtime, self.args.report_to))

    def _setup_attempt(self) -> None:
        """Claim this attempt's number at the checkpoint location (fencing out stale attempts)."""
        require_data_parallel(self.args)
        self.store = storage.open_store(config.checkpoint_uri(self.settings), self.settings.transfer_concurrency)
        self.generation = on_main(attempts.claim_generation, self.store, self.runtime.describe())

    def _setup_restore(self) -> None:
        if self.layout.count == 1:
            restored = on_local_main(
                checkpoints.restore, self.store, self.work.checkpoints, self.settings.transfer_concurrency
            )
        else:
            restored = self._restore_on_every_machine()
        self.resumed_step, self.resumed_dir = restored or (None, None)

    def _restore_on_every_machine(self) -> tuple[int, Path] | None:
        """Several machines resume from one checkpoint: world rank 0 picks the candidates, each
        machine downloads the shared files and its own processes' files, and an older checkpoint
        is tried when any machine could not verify its files."""
        for cp in on_main(checkpoints.complete, self.store):
            folder = on_local_main(
                checkpoints.fetch,
                self.store,
                cp,
                self.work.checkpoints,
                self.settings.transfer_concurrency,
                self.layout.ranks,
            )
            if not agree([folder is None])[0]:
                return cp.step, folder
            log.warning("checkpoint %s could not be restored on every machine: trying an older one", cp.name)
        return None

    def setup_model_files(self) -> None:
        """The base model's files (a Hub model through its mirror at FT_CACHE_URI) and its tokenizer."""
        settings, work = self.settings, self.work.root
        self.mirror = sources.Mirror(config.cache_uri(settings, self.runtime), work, settings.transfer_concurrency)
        room = functools.partial(
            disk.room_for, work, "downloading the model", lambda: disk.source_bytes([settings.model])
        )

        def mirror():  # the main process: a Hub model's commit pinned and its files mirrored
            with room():
                return sources.model_source(settings, self.mirror, work)

        def fetch():
            with room():
                return sources.fetch_model(settings, self.model_source, self.mirror, work)

        with self.stages.timed("model_download"):
            self.model_source = self._on_cache_main(self.mirror.store.uri, mirror)
            self.model_dir = on_local_main(fetch)
        modeling.check_model(self.model_dir, settings)
        self.tokenizer = modeling.load_tokenizer(self.model_dir, settings.model)

    def setup_data(self) -> None:
        self.setup_data_sources()
        self.prepared = self.prepare_data(self.settings)

    def setup_data_sources(self) -> None:
        """What the data is, identified by its content (a Hub data set pinned and mirrored first)."""
        with self.stages.timed("data_sources"):
            self.data_sources = self._on_cache_main(
                self.mirror.store.uri, sources.data_sources, self.settings, self.mirror, self.work.root
            )

    def prepare_data(self, settings: JobSettings) -> tasks.Prepared:
        """The tokenized data sets and the task's info for `settings` (also each tune trial's): the
        prepared data kept at FT_CACHE_URI when there is some for them, else prepared here (by the
        main process, which keeps it there for the next attempt)."""
        work = self.work.root
        needed = functools.partial(disk.source_bytes, [settings.train_data, settings.eval_data])

        def build():
            with disk.room_for(work, "preparing the data", needed):
                return prepared.build(
                    settings, self.task, self.tokenizer, self.data_sources, self.mirror, work, self.stages
                )

        if not settings.cache_prepared_data:
            return in_turn(build)
        cache = prepared.Cache(config.cache_uri(settings, self.runtime), work, settings.transfer_concurrency)
        key, inputs = self._on_cache_main(
            cache.store.uri, prepared.key_for, settings, self.model_dir, self.data_sources
        )
        with self.stages.timed("prepared_load"):
            folder = on_local_main(cache.fetch, key)
        self.prepared_hit = folder is not None
        if folder is None:

            def save():
                with disk.room_for(work, "saving the prepared data", needed):
                    cache.save(key, inputs, build, self.stages)

            self._on_cache_main(cache.store.uri, save)
            with self.stages.timed("prepared_load"):
                folder = on_local_main(cache.fetch, key, False)
            if folder is None:
                raise WorldError(f"the prepared data just saved at {cache.store.uri} (key {key}) is gone; try again")
        with self.stages.timed("prepared_load"):
            return prepared.read(folder)

    def _on_cache_main(self, cache_uri: str, fn: Callable, *args) -> Any:
        """fn(*args) by the process that keeps the cache at `cache_uri` (Hub mirrors, prepared data):
        world rank 0 when it is one store for every machine; each machine's first process when it is
        a folder (on SageMaker with several instances it is under each instance's own
        /opt/ml/checkpoints). Its result on every process."""
        if self.layout.count > 1 and not storage.is_s3(cache_uri):
            return on_local_main(fn, *args)
        return on_main(fn, *args)

    def _setup_model(self) -> None:
        settings, task, info = self.settings, self.task, self.prepared.info
        with modeling.one_line_load_report(settings.model):
            model = task.load_model(self.model_dir, settings.model, info, settings, self.args.seed)
        if self.model_source is not None:  # recorded in the published config.json
            model.config.finetune_base_model = self.model_source.record()
        self.model = adapters.apply(model, settings)
        self.train_ds, self.eval_ds = self.prepared.train, self.prepared.eval

    # -- train --------------------------------------------------------------------------------

    def train(self) -> None:
        settings = self.settings
        if self.layout.local_main:  # each machine uploads its files; world rank 0 alone commits checkpoints
            self.sync = CheckpointSync(
                self.store,
                self.work.staging,
                self.generation,
                settings.checkpoint_keep_last,
                settings.transfer_concurrency,
                uploader=upload_process.start(),
                upload_timeout_s=settings.upload_timeout_seconds,
                node=self.layout.index,
                nodes=self.layout.count,
            )
        main_sync = self.sync if is_main() else None
        self.report = run_report.RunReport(self.store, settings, self.generation, self.resumed_step, main_sync)
        self.report.record_attempt()
        self.stopper = interruption.StopOnRequest(self.stop, agree, self._stop_plan(main_sync))
        self.clock = callbacks.RunClock(self.started)
        tensorboard = callbacks.SyncTensorBoard(
            self.work.root / "tensorboard", config.tensorboard_uri(settings, self.runtime)
        )
        # MLflow / wandb: later attempts reopen the run the first one recorded at the checkpoint location
        tracked = on_main(tracking.resume_runs, self.store, self.args.report_to, self.environ)
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
                callbacks.SyncCheckpoints(self.sync, self.layout.count),
                self.stopper,
                callbacks.SaveOncePerStep(),
                callbacks.MetricLines(main_sync),
                self.clock,
                tensorboard,
                self.report,
                tracking.RecordRuns(self.store, self.args.report_to, tracked, self.environ),
                *callbacks.extra_callbacks(settings),
            ],
        )
        tensorboard.attach(self.trainer)
        checkpoints_dir = self.work.checkpoints
        with disk.room_for(checkpoints_dir, "training", lambda: disk.largest_checkpoint_bytes(checkpoints_dir)):
            self.trainer.train(resume_from_checkpoint=str(self.resumed_dir) if self.resumed_dir else None)

    # -- finish -------------------------------------------------------------------------------

    def finish(self) -> dict:
        """Uploads finished and the attempt accounted for; an interrupted attempt ends here (143/130).
        Otherwise: evaluate, save, and publish the model with metrics.json."""
        self._end_other_machines_uploads()
        figures = on_main(self._end_attempt)
        share_parts(self.sync, self.layout.count)  # world rank 0's last retention reaches the other machines
        if self.stopper.stopped_at_step is not None:
            interruption.raise_interrupted(self.stop, figures, self.stopper.skipped_step is not None)
        metrics: dict[str, Any] = self.trainer.evaluate() if self.eval_ds is not None else {}
        folder = per_process(self.work.output)
        weights = lambda: disk.largest_checkpoint_bytes(self.work.checkpoints, "*.safetensors")  # noqa: E731
        with disk.room_for(folder, "saving the model", weights):
            saved = outputs.save_model(self.trainer, folder, self.settings.merge_adapter)
        if not is_main():
            return metrics
        step = self.trainer.state.global_step
        totals = accounting.run_totals(attempts.attempt_history(self.store), self.generation, figures)
        metrics.update(
            global_step=step,
            resumed_from_step=self.resumed_step,
            **figures,
            **{f"run_{k}": v for k, v in totals.items()},
            **self.stages.metrics(),
        )
        if self.prepared_hit is not None:
            metrics["prepared_data_hit"] = int(self.prepared_hit)
        print(reporting.format_metrics(metrics), flush=True)
        if self.model_source is not None:
            metrics["model_source"] = self.model_source.record()
            sources.model_card(saved, self.model_source)
        outputs.write_settings(saved, self.settings)  # settings.json, published with the model
        self.report.publish(self.trainer.state, metrics, into=saved)  # published with the model, before metrics.json
        where = outputs.publish(
            saved,
            metrics,
            self.settings.output_uri,
            self.settings.transfer_concurrency,
            keep=(
                config.checkpoint_uri(self.settings),
                config.tensorboard_uri(self.settings, self.runtime),
                config.cache_uri(self.settings, self.runtime),  # the Hub mirror and prepared data
                self.settings.work_dir,  # should the output hold it: the model being published is there
            ),
            superseded=lambda: attempts.newest_generation(self.store) > self.generation,
        )
        log.info("done: step %d, model and metrics.json at %s", step, where)
        return metrics

    def _end_other_machines_uploads(self) -> None:
        """On several machines: the others' uploads finished (or given up at the deadline) and their
        parts reported to world rank 0, which commits the checkpoints once it has every part."""
        if self.layout.count == 1:
            return
        if self.sync is not None and self.layout.index > 0:
            waited_since = time.monotonic()
            if not self.sync.drain(lambda: self._upload_deadline(waited_since)):
                log.warning("this machine's checkpoint uploads did not finish: world rank 0 will not commit them")
        share_parts(self.sync, self.layout.count)

    def _end_attempt(self) -> dict:
        """The main process's end of training: its uploads finished, the preemption figures
        printed, and an interrupted attempt's ending recorded; returns the figures."""
        assert self.sync is not None  # the main process always has one
        waited_since = time.monotonic()
        finished = self.sync.drain(lambda: self._upload_deadline(waited_since))
        figures = accounting.accounting(
            self.stop, self.stopper, self.sync.stats, self.clock.first_step_s, self.resumed_step, self.generation
        )
        print(reporting.format_metrics(figures), flush=True)
        if not finished:
            raise self._uploads_stalled(waited_since)
        if self.sync.superseded:
            raise WorldError(f"a newer attempt of this job took over {self.store.uri}; this attempt stopped")
        if self.stopper.stopped_at_step is not None:
            attempts.record_attempt_end(self.store, self.generation, "interrupted", figures)
            self.report.publish_stopping()  # best effort: the report shows the interruption
        return figures

    def _upload_deadline(self, waited_since: float) -> float:
        """When waiting for the checkpoint uploads ends: FT_UPLOAD_TIMEOUT_SECONDS, or sooner after
        a stop request, before the platform's kill (FT_STOP_GRACE_SECONDS)."""
        deadline = waited_since + self.settings.upload_timeout_seconds
        stop = self._stop_deadline()
        return deadline if stop is None else min(deadline, stop)

    def _stop_deadline(self) -> float | None:
        """By when a stop checkpoint must be durable: the spot notice's time or FT_STOP_GRACE_SECONDS."""
        grace = config.stop_grace_seconds(self.settings, self.runtime)
        return interruption.stop_deadline(self.stop, grace, self.settings.stop_grace_seconds is not None)

    def _stop_plan(self, sync: CheckpointSync | None) -> interruption.StopCheckpointPlan | None:
        """The main process skips a stop checkpoint that cannot be durable in time (FT_STOP_CHECKPOINT)."""
        if sync is None or self.settings.stop_checkpoint == "always":
            return None
        size = lambda: disk.largest_checkpoint_bytes(self.work.checkpoints)  # noqa: E731 (a restored checkpoint)
        return interruption.StopCheckpointPlan(sync, self._stop_deadline, self.settings.assumed_upload_mb_per_s, size)

    def _uploads_stalled(self, waited_since: float) -> WorldError:
        assert self.sync is not None
        if self.stop.is_set():
            grace = config.stop_grace_seconds(self.settings, self.runtime)
            source = interruption.deadline_source(self.stop, grace, self.settings.stop_grace_seconds is not None)
            return self.sync.unfinished(f"before the platform's kill after the stop ({source})")
        return self.sync.unfinished(f"within {time.monotonic() - waited_since:.0f} s (FT_UPLOAD_TIMEOUT_SECONDS)")

    # -- cleanup ------------------------------------------------------------------------------

    def cleanup(self) -> None:
        """Runs whatever happened: no poller thread or upload process outlives the attempt."""
        if self.poller is not None:
            self.poller.close()
        if self.sync is not None:
            self.sync.close()
