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
