"""The GPU defaults (entrypoint/job/gpu_defaults.py): decided for injected GPUs, since this machine
has none; TrainingArguments are built only where CPU allows them (no bf16, no TF32 here)."""

import logging
import types

import pytest

from entrypoint.config.platform import Runtime
from entrypoint.config.settings import load_settings, trainer_overrides
from entrypoint.config.trainer_fields import DEFAULTS
from entrypoint.job import gpu_defaults as gd
from entrypoint.job.gpu_defaults import GpuInfo, attention_default, gpu_defaults
from entrypoint.job.modeling import model_kwargs
from entrypoint.job.training import Hardware, training_arguments

H200 = GpuInfo("NVIDIA H200", (9, 0), True)
A100 = GpuInfo("NVIDIA A100-SXM4-80GB", (8, 0), True)
V100 = GpuInfo("Tesla V100-SXM2-16GB", (7, 0), False)
T4_EMULATED = GpuInfo("Tesla T4", (7, 5), True)  # should torch report emulated bf16, the capability still decides
CPU = Hardware(cuda=False, packages=frozenset())
NONE: frozenset[str] = frozenset()


def settings(**extra):
    env = {"FT_MODEL": "m", "FT_TRAIN_DATA": "t.csv", **{f"FT_{k.upper()}": v for k, v in extra.items()}}
    return load_settings(env, Runtime("local"))


def decide(gpu, packages=NONE, workers=0, **extra):
    s = settings(**extra)
    return gpu_defaults(gpu, packages, trainer_overrides(s), workers, s.gpu_defaults)


def test_without_a_gpu_nothing_changes(tmp_path):
    assert gpu_defaults(None, frozenset({"flash_attn", "liger_kernel"}), {}, workers=4) == ({}, [])
    assert attention_default(None, frozenset({"flash_attn"}), True, None) == (None, None)
    # The job's TrainingArguments on CPU are what they were before the GPU defaults: finetune's
    # defaults, fp32, no pinning; a GPU handed in without CUDA is not looked at.
    today = training_arguments(settings(), tmp_path, cuda=False, hw=CPU).to_dict()
    with_gpu = training_arguments(settings(), tmp_path, cuda=False, hw=CPU, gpu=H200).to_dict()
    from transformers import TrainingArguments

    before = TrainingArguments(output_dir=str(tmp_path), **DEFAULTS, dataloader_pin_memory=False).to_dict()
    assert today == with_gpu == before
    assert (today["bf16"], today["fp16"], today["tf32"], today["dataloader_persistent_workers"]) == (
        False,
        False,
        None,
        False,
    )


@pytest.mark.parametrize("gpu", [A100, H200], ids=["A100", "H200"])
def test_ampere_or_newer_gets_bf16_fused_adamw_tf32_and_pinned_memory(gpu):
    kwargs, notes = decide(gpu)
    assert kwargs == {"bf16": True, "optim": "adamw_torch_fused", "tf32": True, "dataloader_pin_memory": True}
    assert f"bf16 mixed precision on {gpu.name} (compute {gpu.capability[0]}.{gpu.capability[1]})" in notes[0]
    for key in kwargs:  # every default says how to turn it off
        assert any(f"FT_{key.upper()}=" in note for note in notes), key


def test_pre_ampere_gpus_get_neither_bf16_nor_tf32_and_fp16_stays_the_users_call():
    for gpu in (V100, T4_EMULATED):
        kwargs, notes = decide(gpu)
        assert "bf16" not in kwargs and "fp16" not in kwargs and "tf32" not in kwargs
        assert kwargs["optim"] == "adamw_torch_fused"
        assert any("fp32 on Tesla" in n and "FT_FP16=true turns fp16 mixed precision on" in n for n in notes)


def test_attention_is_flash_attention_2_only_with_flash_attn_ampere_and_half_precision():
    flash = frozenset({"flash_attn"})
    implementation, note = attention_default(H200, flash, True, None)
    assert implementation == "flash_attention_2" and "FT_ATTN_IMPLEMENTATION=sdpa" in note
    assert attention_default(H200, NONE, True, None)[0] == "sdpa"  # not installed
    assert attention_default(H200, flash, False, None)[0] == "sdpa"  # fp32
    assert attention_default(V100, flash, True, None)[0] == "sdpa"  # pre-Ampere
    assert attention_default(H200, flash, True, "eager") == (None, None)  # the user's choice, applied at load
    assert attention_default(H200, flash, True, None, enabled=False) == (None, None)


@pytest.mark.parametrize(
    "setting, unchanged",
    [
        ({"optim": "adafactor"}, "optim"),
        ({"deepspeed": "ds.json"}, "optim"),
        ({"bf16": "false"}, "bf16"),
        ({"fp16": "true"}, "bf16"),
        ({"tf32": "false"}, "tf32"),
        ({"dataloader_pin_memory": "false"}, "dataloader_pin_memory"),
    ],
)
def test_what_the_user_set_is_left_alone(setting, unchanged):
    kwargs, notes = decide(H200, **setting)
    assert unchanged not in kwargs
    assert not any(f"FT_{unchanged.upper()}=" in n and "turns it off" in n for n in notes)
    assert len(kwargs) == 3  # the other defaults still apply


def test_ft_gpu_defaults_false_turns_them_all_off():
    kwargs, [note] = decide(H200, frozenset({"flash_attn", "liger_kernel"}), workers=4, gpu_defaults="false")
    assert kwargs == {} and "FT_GPU_DEFAULTS=false" in note
    s = settings(gpu_defaults="false")
    assert attention_default(H200, frozenset({"flash_attn"}), True, s.attn_implementation, s.gpu_defaults) == (
        None,
        None,
    )


def test_persistent_workers_only_with_workers():
    assert "dataloader_persistent_workers" not in decide(H200, workers=0)[0]
    kwargs, notes = decide(H200, workers=2)
    assert kwargs["dataloader_persistent_workers"] is True
    assert any("FT_DATALOADER_PERSISTENT_WORKERS=false" in n for n in notes)
    assert "dataloader_persistent_workers" not in decide(H200, workers=2, dataloader_persistent_workers="false")[0]
    # the job's workers: FT_DATALOADER_NUM_WORKERS when set, else the default chosen for the machine
    s = settings(dataloader_num_workers="0")
    assert "dataloader_persistent_workers" not in gd.for_job(
        s, trainer_overrides(s), {"dataloader_num_workers": 4}, H200, NONE
    )
    s = settings()
    assert gd.for_job(s, trainer_overrides(s), {"dataloader_num_workers": 4}, H200, NONE)[
        "dataloader_persistent_workers"
    ]


def test_liger_kernel_is_suggested_when_installed_not_turned_on():
    kwargs, notes = decide(H200, frozenset({"liger_kernel"}))
    assert "use_liger_kernel" not in kwargs
    assert any("FT_USE_LIGER_KERNEL=true" in n for n in notes)
    assert not any("liger" in n for n in decide(H200, frozenset({"liger_kernel"}), use_liger_kernel="false")[1])


def test_training_arguments_apply_and_log_the_gpu_defaults(tmp_path, caplog):
    # A pre-Ampere GPU: the only defaults TrainingArguments accept on this CPU (no bf16, no TF32).
    caplog.set_level(logging.INFO, logger="entrypoint.job.gpu_defaults")
    args = training_arguments(settings(dataloader_num_workers="2"), tmp_path, cuda=True, hw=CPU, gpu=V100)
    assert args.dataloader_persistent_workers is True and (args.bf16, args.fp16) == (False, False)
    [record] = [r for r in caplog.records if r.getMessage().startswith("GPU defaults:")]
    assert "FT_FP16=true" in record.getMessage() and "FT_GPU_DEFAULTS=false" in record.getMessage()
    off = training_arguments(
        settings(dataloader_num_workers="2", gpu_defaults="false"), tmp_path, cuda=True, hw=CPU, gpu=V100
    )
    assert off.dataloader_persistent_workers is False


def tiny_classifier(attn_implementation=None):
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    if attn_implementation:
        config._attn_implementation = attn_implementation
    return BertForSequenceClassification(config)


def test_the_default_attention_is_applied_to_the_loaded_model_where_it_fits(caplog):
    caplog.set_level(logging.INFO)
    bf16 = types.SimpleNamespace(bf16=True, fp16=False)
    model = tiny_classifier("eager")
    gd.apply_attention(model, settings(), bf16, H200, NONE)
    assert model.config._attn_implementation == "sdpa"
    assert "GPU default: SDPA attention" in caplog.text
    # FlashAttention-2 chosen, but this machine cannot run it: the model keeps SDPA, and the log says so.
    gd.apply_attention(model, settings(), bf16, H200, frozenset({"flash_attn"}))
    assert model.config._attn_implementation == "sdpa"
    assert "flash_attention_2 does not fit this model; it uses sdpa attention" in caplog.text
    # The user's FT_ATTN_IMPLEMENTATION goes to from_pretrained and is not switched afterwards.
    chosen = settings(attn_implementation="eager")
    assert model_kwargs(chosen) == {"attn_implementation": "eager"}
    eager = tiny_classifier("eager")
    gd.apply_attention(eager, chosen, bf16, H200, NONE)
    assert eager.config._attn_implementation == "eager"
