"""The callbacks between the Trainer and what the job keeps (job/callbacks.py): one checkpoint
per step whatever the Trainer asks for, and a TensorBoard sync that never stops training."""

import logging
import signal

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from entrypoint.durability import interruption
from entrypoint.job import callbacks


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Linear(2, 1)

    def forward(self, x, y):
        return {"loss": ((self.w(x).squeeze(-1) - y) ** 2).mean()}


class Saves(TrainerCallback):
    def __init__(self):
        self.steps: list[int] = []

    def on_save(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)
        return control


def tiny_trainer(tmp_path, rows: int, callbacks_: list, **schedule) -> Trainer:
    """The Tiny model on `rows` random examples, batch 2, on the CPU; `schedule`: save and length settings."""
    generator = torch.Generator().manual_seed(0)
    data = [{"x": torch.randn(2, generator=generator), "y": torch.randn((), generator=generator)} for _ in range(rows)]
    args = TrainingArguments(
        output_dir=str(tmp_path / "checkpoints"),
        per_device_train_batch_size=2,
        report_to=[],
        use_cpu=True,
        logging_strategy="no",
        disable_tqdm=True,
        **schedule,
    )
    return Trainer(model=Tiny(), args=args, train_dataset=data, callbacks=callbacks_)


def train_with_a_stop_mid_epoch(tmp_path, *extra: TrainerCallback) -> list[int]:
    """Two epochs of 8 steps, saved at each epoch's end; a SIGTERM arrives at step 3."""
    stop = interruption.StopRequest()

    class SigtermAtStep3(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                stop.request("SIGTERM", signal.SIGTERM)
            return control

    saves = Saves()
    callbacks_ = [SigtermAtStep3(), interruption.StopOnRequest(stop), *extra, saves]
    tiny_trainer(tmp_path, 16, callbacks_, save_strategy="epoch", num_train_epochs=2).train()
    return saves.steps


def test_a_stop_mid_epoch_saves_its_step_once(tmp_path):
    # Without SaveOncePerStep the Trainer saves step 3 twice: the stop's save, then the epoch-end
    # save of the epoch it ended early, rewriting in place the files the first save's upload reads.
    assert train_with_a_stop_mid_epoch(tmp_path / "without") == [3, 3]
    assert train_with_a_stop_mid_epoch(tmp_path / "with", callbacks.SaveOncePerStep()) == [3]


def test_a_tensorboard_sync_to_an_unusable_folder_warns_once_and_training_goes_on(tmp_path, caplog):
    events = tmp_path / "tensorboard"
    events.mkdir()
    (events / "events.out.tfevents.1").write_bytes(b"event")
    blocked = tmp_path / "output"
    blocked.write_text("a file where the TensorBoard folder should go")
    sync = callbacks.SyncTensorBoard(events, str(blocked / "tensorboard"))
    with caplog.at_level(logging.DEBUG, logger="entrypoint.job.callbacks"):
        sync.sync()
        (events / "events.out.tfevents.1").write_bytes(b"event, grown")
        sync.sync()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "TensorBoard sync" in r.getMessage()]
    assert len(warnings) == 1 and "training goes on" in warnings[0].getMessage()


def test_a_superseded_attempt_stops_training_at_the_next_step(tmp_path):
    from entrypoint.durability import attempts
    from entrypoint.durability.sync import CheckpointSync
    from entrypoint.io.storage import LocalStore

    store = LocalStore(str(tmp_path / "store"))
    stale = attempts.claim_generation(store, "this attempt")
    attempts.claim_generation(store, "a newer attempt of the same job")
    sync = CheckpointSync(store, tmp_path / "staging", stale, keep_last=1)

    class UploadedAtStep3(TrainerCallback):  # the upload of checkpoint 2 (saved after step 2) has ended
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                assert sync.wait(30)
            return control

    callbacks_ = [UploadedAtStep3(), callbacks.SyncCheckpoints(sync)]
    trainer = tiny_trainer(tmp_path, 40, callbacks_, save_strategy="steps", save_steps=2, max_steps=20)
    trainer.train()
    sync.close()
    assert sync.superseded and trainer.state.global_step == 3  # not the 20 it was asked for
