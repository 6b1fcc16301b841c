"""The table of Trainer fields (config/trainer_fields.py): complete for the installed transformers,
and what it says is what the settings and the TrainingArguments do."""

import dataclasses
import enum
import pickle
import typing

import pytest
from transformers import Seq2SeqTrainingArguments

from entrypoint.config.platform import Runtime
from entrypoint.config.settings import check_setting_names, load_settings, setting_names
from entrypoint.config.trainer_fields import DEFAULTS, REFUSED, REPORT_TO, SEQ2SEQ_ONLY, TRAINER_FIELDS
from entrypoint.errors import SettingsError
from entrypoint.job.training import Hardware, missing_files, training_arguments

BASE = {"FT_MODEL": "m", "FT_TRAIN_DATA": "t.csv", "FT_EVAL_DATA": "e.csv"}
CPU = Hardware(cuda=False, packages=frozenset())
FIELDS = {f.name: f for f in dataclasses.fields(Seq2SeqTrainingArguments) if f.init and not f.name.startswith("_")}


def problems(**settings) -> list[str]:
    with pytest.raises(SettingsError) as info:
        load_settings({**BASE, **{f"FT_{k.upper()}": v for k, v in settings.items()}}, Runtime("local"))
    return info.value.problems


def test_every_field_of_the_installed_transformers_is_decided():
    """A transformers upgrade that adds a field fails here until the table decides it."""
    undecided = sorted(set(FIELDS) - set(TRAINER_FIELDS))
    assert not undecided, f"decide these Seq2SeqTrainingArguments fields in trainer_fields.TRAINER_FIELDS: {undecided}"
    gone = sorted(set(TRAINER_FIELDS) - set(FIELDS))
    assert not gone, f"trainer_fields.TRAINER_FIELDS decides fields transformers no longer has: {gone}"


def test_each_decision_says_why():
    for name, d in TRAINER_FIELDS.items():
        assert d.kind in ("allowed", "refused", "adjusted"), name
        if d.kind != "allowed":
            assert d.reason, f"{name} is {d.kind} without a reason"
        if d.kind == "refused":
            assert d.fix, f"{name} is refused without a fix"


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_a_refused_field_is_not_a_setting_and_the_message_says_why_and_what_to_do(name):
    [problem] = check_setting_names([name])
    assert problem.startswith(f"FT_{name.upper()} cannot be set: {REFUSED[name].reason}")
    assert f"Fix: {REFUSED[name].fix}" in problem
    assert name not in setting_names()


def test_the_fields_that_undo_the_jobs_own_mechanisms_are_refused_with_the_other_problems():
    found = problems(enable_jit_checkpoint="true", save_only_model="true", ignore_data_skip="true", save_steps="ten")
    assert len(found) == 4, found
    assert any("FT_ENABLE_JIT_CHECKPOINT cannot be set" in p and "SIGTERM" in p for p in found)
    assert any("FT_SAVE_ONLY_MODEL cannot be set" in p and "resume exactly" in p for p in found)
    assert any("FT_IGNORE_DATA_SKIP cannot be set" in p for p in found)


BOUNDED = sorted(
    (name, d) for name, d in TRAINER_FIELDS.items() if d.bounds and d.kind != "refused" and not d.seq2seq_only
)


@pytest.mark.parametrize("name, decision", BOUNDED, ids=[n for n, _ in BOUNDED])
def test_values_out_of_bounds_are_refused_before_any_download(name, decision):
    bad = {"gt": lambda v: v, "ge": lambda v: v - 1, "lt": lambda v: v, "le": lambda v: v + 1}
    for op, limit in decision.bounds.items():
        value = bad[op](limit)
        if decision.unset is not None and value == decision.unset:
            value -= 1
        [problem] = problems(**{name: str(value)})
        assert problem.startswith(f"FT_{name.upper()} is invalid (input should be"), problem


def test_the_unset_value_of_max_steps_passes():
    assert load_settings({**BASE, "FT_MAX_STEPS": "-1"}, Runtime("local")).max_steps == -1
    [problem] = problems(max_steps="0")
    assert "FT_MAX_STEPS is invalid (input should be greater than 0, or -1 (unset))" in problem


def enum_fields():
    for name, f in FIELDS.items():
        members = list(typing.get_args(f.type)) or [f.type]
        if name not in REFUSED and any(isinstance(m, type) and issubclass(m, enum.Enum) for m in members):
            yield name


@pytest.mark.parametrize("name", sorted(enum_fields()))
def test_an_unknown_enum_value_names_the_setting_and_the_allowed_values(name):
    [problem] = problems(**{name: "no-such-value"})
    enum_type = next(m for m in typing.get_args(FIELDS[name].type) if isinstance(m, type) and issubclass(m, enum.Enum))
    first = next(iter(enum_type)).value
    assert problem.startswith(f"FT_{name.upper()} is invalid (input should be") and f"'{first}'" in problem


def test_report_to_knows_exactly_the_trainers_integrations():
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    assert set(REPORT_TO) == set(INTEGRATION_TO_CALLBACK) | {"all", "none"}


def test_broken_json_names_the_setting():
    [problem] = problems(lr_scheduler_kwargs='{"num_cycles":')
    assert problem.startswith("FT_LR_SCHEDULER_KWARGS is invalid (input should be a JSON object")


def test_a_named_json_file_must_exist_on_this_machine(tmp_path):
    config = tmp_path / "fsdp.json"
    config.write_text("{}")
    found = missing_files({"fsdp_config": str(config), "accelerator_config": "/nonexistent/a.json"})
    assert found == [
        "FT_ACCELERATOR_CONFIG: /nonexistent/a.json does not exist on this machine. Give the JSON itself "
        "(FT_ACCELERATOR_CONFIG='{...}'), or a file the image holds."
    ]
    assert missing_files({"deepspeed": '{"zero_optimization": {"stage": 2}}'}) == []
    assert missing_files({"generation_config": str(tmp_path)}) == []
    [problem] = missing_files({"generation_config": "google/flan-t5-small"})  # a Hub id: fetched only late
    assert problem.startswith("FT_GENERATION_CONFIG: google/flan-t5-small does not exist on this machine.")


def test_the_hub_token_is_kept_out_of_the_pickled_arguments_and_the_settings_repr(tmp_path):
    token = "hf_do-not-leak-0123456789"
    settings = load_settings({**BASE, "FT_HUB_TOKEN": token}, Runtime("local"))
    assert token not in repr(settings) and token not in str(settings.model_dump())
    args = training_arguments(settings, tmp_path, cuda=False, hw=CPU)
    assert args.hub_token is None
    assert token.encode() not in pickle.dumps(args)  # what torch.save writes into training_args.bin


def test_the_tables_defaults_and_seq2seq_fields_reach_the_arguments(tmp_path):
    args = training_arguments(load_settings(BASE, Runtime("local")), tmp_path, cuda=False, hw=CPU)
    assert {name: getattr(args, name) for name in DEFAULTS} == DEFAULTS
    assert {
        "predict_with_generate",
        "generation_max_length",
        "generation_num_beams",
        "generation_config",
    } == SEQ2SEQ_ONLY


def test_a_trainer_option_value_with_bool_or_text_takes_both():
    ok = load_settings({**BASE, "FT_INCLUDE_NUM_INPUT_TOKENS_SEEN": "non_padding"}, Runtime("local"))
    assert ok.include_num_input_tokens_seen == "non_padding"
    assert (
        load_settings(
            {**BASE, "FT_INCLUDE_NUM_INPUT_TOKENS_SEEN": "true"}, Runtime("local")
        ).include_num_input_tokens_seen
        is True
    )
