import pytest

from entrypoint.config.platform import Runtime
from entrypoint.config.settings import load_settings
from entrypoint.errors import SettingsError, UserError
from entrypoint.job.callbacks import extra_callbacks
from entrypoint.job.training import Hardware, hardware_problems, training_arguments

CPU = Hardware(cuda=False, packages=frozenset())
GPU = Hardware(cuda=True, packages=frozenset({"bitsandbytes", "deepspeed", "tensorboard", "mlflow", "wandb"}))


def settings(**extra):
    env = {
        "FT_MODEL": "m",
        "FT_TRAIN_DATA": "t.csv",
        "FT_EVAL_DATA": "e.csv",
        **{f"FT_{k.upper()}": v for k, v in extra.items()},
    }
    return load_settings(env, Runtime("local"))


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"fp16": True}, "FT_FP16=true needs a CUDA GPU"),
        ({"optim": "adamw_8bit"}, "FT_OPTIM=adamw_8bit needs a CUDA GPU and the bitsandbytes package"),
        ({"optim": "paged_adamw_32bit"}, "bitsandbytes"),
        ({"ddp_backend": "nccl"}, "use gloo on CPU"),
        ({"fsdp": "full_shard"}, "FT_FSDP needs CUDA GPUs: on CPU accelerate ignores FSDP"),
        ({"deepspeed": "ds.json"}, "FT_DEEPSPEED needs the deepspeed package"),
        ({"report_to": ["tensorboard"]}, "FT_REPORT_TO=tensorboard needs the tensorboard package"),
        ({"report_to": ["mlflow"]}, "FT_REPORT_TO=mlflow needs the mlflow package (pip install 'finetune[mlflow]')"),
        ({"report_to": "wandb"}, "FT_REPORT_TO=wandb needs the wandb package (pip install 'finetune[wandb]')"),
    ],
)
def test_settings_the_hardware_cannot_run_get_a_clear_message(kwargs, fragment):
    [problem] = hardware_problems(kwargs, CPU)
    assert fragment in problem
    assert hardware_problems(kwargs, GPU) == []


def test_cpu_friendly_settings_pass():
    assert hardware_problems({"optim": "adafactor", "gradient_checkpointing": True, "ddp_backend": "gloo"}, CPU) == []


def test_knobs_of_the_trainer_workflow_reach_training_arguments(tmp_path):
    s = settings(
        eval_strategy="steps",
        eval_steps="10",
        save_steps="10",
        load_best_model_at_end="true",
        gradient_accumulation_steps="4",
        gradient_checkpointing="true",
        optim="adafactor",
        lr_scheduler_type="cosine",
        warmup_steps="0.1",
        early_stopping_patience="2",
    )
    args = training_arguments(s, tmp_path / "ck", cuda=False, best_metric="accuracy", hw=CPU)
    assert (args.gradient_accumulation_steps, args.gradient_checkpointing, args.optim.value) == (4, True, "adafactor")
    assert args.lr_scheduler_type.value == "cosine" and args.metric_for_best_model == "accuracy"
    assert args.restore_callback_states_from_checkpoint is True  # early stopping resumes its patience
    assert args.save_total_limit == 2 and args.disable_tqdm is True
    [callback] = extra_callbacks(s)
    assert callback.early_stopping_patience == 2


def test_hardware_problems_are_settings_errors(tmp_path):
    with pytest.raises(SettingsError, match="FT_FP16=true needs a CUDA GPU"):
        training_arguments(settings(fp16="true"), tmp_path, cuda=False, hw=CPU)


def test_trainer_rejections_become_user_errors_naming_the_settings(tmp_path):
    s = settings(eval_strategy="steps", eval_steps="10", save_steps="15", load_best_model_at_end="true")
    with pytest.raises(UserError, match="The Trainer rejected the settings") as info:
        training_arguments(s, tmp_path, cuda=False, hw=CPU)
    assert "FT_LOAD_BEST_MODEL_AT_END requires the saving steps" in str(info.value)  # not --load_best_model_at_end
    assert "--" not in str(info.value)


def test_seq2seq_only_settings_are_refused_for_other_tasks(tmp_path):
    with pytest.raises(UserError, match="FT_PREDICT_WITH_GENERATE only apply to FT_TASK=seq2seq"):
        training_arguments(settings(predict_with_generate="true"), tmp_path, cuda=False, hw=CPU)


def test_precision_is_fp32_on_cpu_and_explicit_settings_win():
    from entrypoint.job.modeling import precision

    assert precision(None, None) == {"bf16": False, "fp16": False}  # this machine has no GPU
    assert precision(True, None) == {"bf16": True, "fp16": False}
    assert precision(None, True) == {"bf16": False, "fp16": True}


def test_classification_evaluates_in_batches_twice_the_training_batch_unless_set(tmp_path, caplog):
    import logging

    with caplog.at_level(logging.INFO):
        args = training_arguments(
            settings(per_device_train_batch_size="16"), tmp_path, False, hw=CPU, eval_batch_scale=2
        )
    assert args.per_device_eval_batch_size == 32
    assert "evaluation batches of 32" in caplog.text and "FT_PER_DEVICE_EVAL_BATCH_SIZE sets it" in caplog.text
    mine = settings(per_device_train_batch_size="16", per_device_eval_batch_size="4")
    assert training_arguments(mine, tmp_path, False, hw=CPU, eval_batch_scale=2).per_device_eval_batch_size == 4
    assert training_arguments(settings(), tmp_path, False, hw=CPU).per_device_eval_batch_size == 8  # other tasks
