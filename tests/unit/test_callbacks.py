"""The job's Trainer callbacks that need no training to check."""

from transformers import TrainerControl, TrainerState

from entrypoint.job.callbacks import MetricLines, progress


def test_progress_is_percent_done_and_time_left_at_this_attempts_rate():
    assert progress(step=300, max_steps=1000, steps_done=100, elapsed_s=50.0) == {"progress_pct": 30.0, "eta_s": 350}
    assert progress(step=300, max_steps=1000, steps_done=0, elapsed_s=0.0) == {"progress_pct": 30.0}
    assert progress(step=3, max_steps=0, steps_done=3, elapsed_s=1.0) == {}


def test_training_lines_carry_progress_and_evaluation_lines_do_not(capsys):
    lines = MetricLines()
    state = TrainerState(global_step=40, max_steps=80)
    lines.on_train_begin(None, state, TrainerControl())  # a resumed attempt starting at step 40
    state.global_step = 60
    lines.on_log(None, state, TrainerControl(), logs={"loss": 0.5, "learning_rate": 1e-5})
    lines.on_log(None, state, TrainerControl(), logs={"eval_loss": 0.4})
    train_line, eval_line = capsys.readouterr().out.splitlines()
    assert "step=60 loss=0.5" in train_line and "progress_pct=75" in train_line and "eta_s=" in train_line
    assert "progress_pct" not in eval_line and "eval_loss=0.4" in eval_line


def test_training_lines_carry_the_age_of_the_newest_durable_checkpoint_and_warn_when_it_lags(capsys, caplog):
    import logging
    import time
    from types import SimpleNamespace

    from entrypoint.durability.sync import SyncStats

    sync = SimpleNamespace(stats=SyncStats())
    lines = MetricLines(sync)
    args = SimpleNamespace(save_steps=10, save_strategy="steps")
    state = TrainerState(global_step=0, max_steps=1000)
    lines.on_train_begin(args, state, TrainerControl())
    state.global_step = 20
    lines.on_log(args, state, TrainerControl(), logs={"loss": 0.5})  # nothing durable yet
    sync.stats.durable_step, sync.stats.durable_at = 10, time.monotonic() - 100  # 100 s: many save intervals
    with caplog.at_level(logging.WARNING):
        lines.on_log(args, state, TrainerControl(), logs={"loss": 0.4})
        lines.on_log(args, state, TrainerControl(), logs={"eval_loss": 0.4})
        lines.on_log(args, state, TrainerControl(), logs={"loss": 0.3})
    before, lagging, evaluation, again = capsys.readouterr().out.splitlines()
    assert "durable_age_s" not in before and "durable_age_s" not in evaluation
    assert float(lagging.split("durable_age_s=")[1].split()[0]) >= 100 and "durable_age_s=" in again
    warnings = [r.getMessage() for r in caplog.records if "newest durable checkpoint (step 10)" in r.getMessage()]
    assert len(warnings) == 1, warnings  # once per attempt
