"""Less padding: training batches of similar length, evaluation batches sorted by length.

The collators pad each batch to its longest example, so a batch of short texts with one long one
costs as much as a batch of long ones. Two remedies, each a sampler:

- training (FT_TRAIN_SAMPLING_STRATEGY=group_by_length, the default of the tasks that set it): the
  Trainer's length grouping (random mega-batches of up to 50 batches, each sorted by length), then
  the same batches in a shuffled order (the batch with the longest example still first), both drawn
  from a generator seeded by (seed, epoch) instead of torch's global RNG, so that a run resumed in
  the middle of any epoch sees the batches an uninterrupted run saw (the Trainer's own sampler draws
  from the global RNG, whose state at an epoch's start a checkpoint does not hold). Unshuffled, each
  mega-batch runs from its longest batch to its shortest: a saw-tooth of lengths. Shuffled, the
  padding and speed are the same; accuracy on SST-2 was the same either way, and the same as with
  random batches (docs/performance.md);
- evaluation (FT_EVAL_SORT_BY_LENGTH, for tasks whose metrics are per-example means): the whole set
  in descending length order, longest first so that an out-of-memory shows at the first batch.

Lengths come from the `input_ids` column through Arrow (no per-row decoding), so no length column
is added to the data (which the collator would pass to the model with FT_REMOVE_UNUSED_COLUMNS=false).
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow.compute as pc
import torch
from torch.utils.data import SequentialSampler
from transformers import Trainer
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices

log = logging.getLogger(__name__)

GROUPED_MESSAGE = "training batches grouped by length (FT_TRAIN_SAMPLING_STRATEGY=random turns this off)"
SORTED_MESSAGE = (
    "evaluation batches sorted by length, longest first; metrics are unchanged (FT_EVAL_SORT_BY_LENGTH=false turns "
    "this off)"
)

EVAL_BATCH_MESSAGE = (
    "evaluation batches of %d (%d × the training batch: evaluation keeps no gradients, and a prediction does not "
    "depend on its batch; FT_PER_DEVICE_EVAL_BATCH_SIZE sets it)"
)


def lengths_of(ds, length_column: str = "length", input_column: str = "input_ids") -> list[int] | None:
    """Each example's length: its `length_column` if it has one, else the length of its
    `input_column` read through Arrow; None for data that is not a datasets.Dataset with them."""
    names = getattr(ds, "column_names", None) or []
    if length_column in names:
        return [int(n) for n in ds[length_column]]
    if input_column not in names or not hasattr(ds, "with_format"):
        return None
    column = ds.with_format("arrow")[input_column]  # this column alone, of the selected rows (indices mapping)
    return pc.list_value_length(column).to_numpy(zero_copy_only=False).astype(np.int64).tolist()


class SeededLengthGroupedSampler(LengthGroupedSampler):
    """The Trainer's length grouping, batches in a shuffled order, depending on (seed, epoch) alone."""

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        super().__init__(batch_size, lengths=lengths)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:  # called by the Trainer (and accelerate) at each epoch's start
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        indices = get_length_grouped_indices(self.lengths, self.batch_size, generator=generator)
        return iter(shuffled_batches(indices, self.batch_size, generator))


def shuffled_batches(indices: list[int], batch_size: int, generator: torch.Generator) -> list[int]:
    """The same batches of `batch_size` consecutive indices in an order drawn from `generator`,
    except the first (the one with the longest example) and a last partial one, which keep their
    places: each mega-batch is sorted longest to shortest, so unshuffled batches run in saw-teeth."""
    full = len(indices) // batch_size
    if full < 3:
        return indices
    order = [0, *(1 + torch.randperm(full - 1, generator=generator)).tolist()]
    return [i for b in order for i in indices[b * batch_size : (b + 1) * batch_size]] + indices[full * batch_size :]


def longest_first(lengths: list[int]) -> list[int]:
    """Indices by descending length; equal lengths keep their order."""
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


class LengthSampling(Trainer):
    """Mixed into a task's Trainer: the seeded length grouping for training, and evaluation in
    descending length order (`eval_sort_by_length`) or in the data's order, never the Trainer's
    randomized grouping of evaluation data (which would change a batch-averaged loss)."""

    def __init__(self, *args, eval_sort_by_length: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_sort_by_length = eval_sort_by_length

    def _get_train_sampler(self, train_dataset=None):
        train_dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy == "group_by_length":
            lengths = lengths_of(train_dataset, self.args.length_column_name)
            if lengths is not None:
                seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
                batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
                return SeededLengthGroupedSampler(batch, lengths, seed)
        return super()._get_train_sampler(train_dataset)

    def _get_eval_sampler(self, eval_dataset):
        if eval_dataset is None or not hasattr(eval_dataset, "__len__"):
            return None
        if self.eval_sort_by_length:
            lengths = lengths_of(eval_dataset, self.args.length_column_name)
            if lengths is not None:
                return longest_first(lengths)  # a list of indices is a sampler
        return SequentialSampler(eval_dataset) if self.args.world_size <= 1 else None


# The notes for task defaults that change which examples share a batch.
DEFAULT_NOTES = {("train_sampling_strategy", "group_by_length"): GROUPED_MESSAGE}


def default_notes(task_defaults: dict, overrides: dict) -> list[str]:
    """A note for each batch-changing task default in effect (the user's setting wins, unnoted)."""
    return [
        note
        for (name, value), note in DEFAULT_NOTES.items()
        if task_defaults.get(name) == value and name not in overrides
    ]


def pad_multiple(cuda: bool) -> int | None:
    """Pad batches to a multiple of 8 on CUDA (tensor cores); on CPU it only adds padding."""
    return 8 if cuda else None
