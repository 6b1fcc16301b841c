"""Length grouping and length-sorted evaluation (entrypoint/tasks/lengths.py), and the defaults that turn them on."""

import logging

import pytest
import torch
from datasets import Dataset
from transformers import AutoTokenizer, BertForSequenceClassification, TrainingArguments
from transformers.trainer_pt_utils import get_length_grouped_indices

from entrypoint.config.platform import Runtime
from entrypoint.config.settings import load_settings
from entrypoint.job.training import Hardware, training_arguments
from entrypoint.tasks import classification, lengths
from tests.support import tiny

CPU = Hardware(cuda=False, packages=frozenset())


def settings(**extra):
    env = {"FT_MODEL": "m", "FT_TRAIN_DATA": "t.csv", **{f"FT_{k.upper()}": v for k, v in extra.items()}}
    return load_settings(env, Runtime("local"))


def ragged(sizes):
    return Dataset.from_dict({"input_ids": [[1] * n for n in sizes], "labels": [0] * len(sizes)})


def test_lengths_come_from_the_selected_rows_or_a_length_column():
    ds = ragged([3, 9, 1, 7, 5]).select([4, 0, 3])  # an indices mapping, as after a held-out split
    assert lengths.lengths_of(ds) == [5, 3, 7]
    assert lengths.lengths_of(ds.add_column("length", [50, 30, 70])) == [50, 30, 70]
    assert lengths.lengths_of(Dataset.from_dict({"text": ["a"]})) is None


def test_grouped_order_depends_on_seed_and_epoch_alone_not_the_global_rng():
    sizes = [(i * 37) % 61 + 1 for i in range(400)]
    sampler = lengths.SeededLengthGroupedSampler(8, sizes, seed=3)
    sampler.set_epoch(1)
    torch.manual_seed(0)
    first = list(sampler)
    torch.manual_seed(12345)  # a resumed process's global RNG is elsewhere
    assert list(sampler) == first
    assert sorted(first) == list(range(400))  # every example once
    sampler.set_epoch(2)
    assert list(sampler) != first  # a new order each epoch

    def padded(order):  # tokens computed when each batch is padded to its longest
        return sum(8 * max(sizes[i] for i in order[k : k + 8]) for k in range(0, len(order), 8))

    shuffled = torch.randperm(400, generator=torch.Generator().manual_seed(1)).tolist()
    assert padded(first) < 0.75 * padded(shuffled)


def test_grouped_batches_are_the_trainers_in_a_seeded_order_longest_batch_first():
    sizes = [(i * 37) % 61 + 1 for i in range(403)]  # 50 full batches of 8 and a last one of 3

    def batches(order):
        return [order[k : k + 8] for k in range(0, len(order), 8)]

    def grouped(seed, epoch):  # the Trainer's grouping, batches in the order it makes them
        generator = torch.Generator().manual_seed(seed + epoch)
        return batches(get_length_grouped_indices(sizes, 8, generator=generator))

    for seed, epoch in [(3, 0), (3, 1), (4, 1)]:
        sampler = lengths.SeededLengthGroupedSampler(8, sizes, seed=seed)
        sampler.set_epoch(epoch)
        ours, theirs = batches(list(sampler)), grouped(seed, epoch)
        assert sorted(map(sorted, ours)) == sorted(map(sorted, theirs))  # the same batches: the same padding
        assert all(len(b) == 8 for b in ours[:-1]) and ours[-1] == theirs[-1]  # the short one stays last
        assert ours[0] == theirs[0] and max(sizes) in [sizes[i] for i in ours[0]]  # an OOM shows at once
        assert ours != theirs  # not the saw-tooth of lengths
        assert batches(list(sampler)) == ours  # from (seed, epoch) alone


def test_longest_first_is_descending_and_stable():
    assert lengths.longest_first([2, 5, 2, 9, 5]) == [3, 1, 4, 0, 2]


def test_group_by_length_is_the_classification_default_logged_and_the_users_setting_wins(tmp_path, caplog):
    task_defaults = classification.TASK.argument_defaults
    with caplog.at_level(logging.INFO):
        args = training_arguments(settings(), tmp_path, False, hw=CPU, task_defaults=task_defaults)
    assert args.train_sampling_strategy == "group_by_length"
    assert lengths.GROUPED_MESSAGE in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO):
        args = training_arguments(
            settings(train_sampling_strategy="random"), tmp_path, False, hw=CPU, task_defaults=task_defaults
        )
    assert args.train_sampling_strategy == "random"
    assert lengths.GROUPED_MESSAGE not in caplog.text
    assert training_arguments(settings(), tmp_path, False, hw=CPU).train_sampling_strategy == "random"


def test_no_padding_to_a_multiple_of_8_on_cpu():
    assert lengths.pad_multiple(cuda=False) is None
    assert lengths.pad_multiple(cuda=True) == 8


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    rows = tiny.sst2_rows("train", 200)
    tiny.build_tiny_bert(folder, [r["text"] for r in rows])
    tokenizer = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(folder, num_labels=2)
    data = Dataset.from_dict({"text": [r["text"] for r in rows], "labels": [int(r["label"]) for r in rows]})
    data = data.map(lambda b: tokenizer(b["text"], truncation=True, max_length=64), batched=True)
    return tokenizer, model, data.remove_columns("text").select(range(40, 200))


def evaluate(tiny_classifier, tmp_path, sort: bool):
    tokenizer, model, data = tiny_classifier
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_eval_batch_size=16, report_to="none", use_cpu=True, disable_tqdm=True
    )
    trainer = classification.ClassificationTrainer(
        model=model,
        args=args,
        eval_dataset=data,
        processing_class=tokenizer,
        data_collator=classification.collator(tokenizer, model, None),
        compute_metrics=classification.compute_metrics,
        eval_sort_by_length=sort,
    )
    widths = [batch["input_ids"].shape[1] for batch in trainer.get_eval_dataloader()]
    return trainer.evaluate(), widths


def test_sorted_evaluation_pads_less_and_gives_the_same_metrics(tiny_classifier, tmp_path):
    plain, plain_widths = evaluate(tiny_classifier, tmp_path, sort=False)
    ordered, sorted_widths = evaluate(tiny_classifier, tmp_path, sort=True)
    assert sorted_widths == sorted(sorted_widths, reverse=True)  # longest first
    assert sum(sorted_widths) < sum(plain_widths)
    assert ordered["eval_accuracy"] == plain["eval_accuracy"]
    assert ordered["eval_f1_macro"] == plain["eval_f1_macro"]
    assert ordered["eval_loss"] == pytest.approx(plain["eval_loss"], rel=1e-5)
