"""Which samples form each batch of an epoch: repeats, regularisation balance, one bucket per batch.

The plan of an epoch depends only on (seed, epoch), never on what happened before, so a resumed
run sees exactly the batches an uninterrupted run would have seen.
"""
from __future__ import annotations

import random
from collections import defaultdict

from library.training.inputs.train_items import TrainItem


def balanced_reg_repeats(reg: list[tuple[int, int]], train_samples: int) -> dict[int, int]:
    """kohya's regularisation balance for one dataset: `reg` is (item index, num_repeats) in folder
    order. The first pass takes whole images with their own repeats until the dataset's training
    samples (with repeats) are matched or passed; while still short, later passes add one repeat per
    image in order. A dataset without training images uses no regularisation image."""
    repeats: dict[int, int] = {}
    taken, first_pass = 0, True
    while reg and taken < train_samples:
        for index, num_repeats in reg:
            repeats[index] = num_repeats if first_pass else repeats[index] + 1
            taken += num_repeats if first_pass else 1
            if taken >= train_samples:
                break
        first_pass = False
    return repeats


def expanded_indices(items: list[TrainItem]) -> list[int]:
    """Item indices repeated num_repeats times; regularisation samples balanced per dataset as
    kohya does (`balanced_reg_repeats`), after the training samples."""
    train = [i for i, item in enumerate(items) for _ in range(item.subset.num_repeats) if not item.is_reg]
    reg_repeats: dict[int, int] = {}
    for dataset in sorted({item.dataset_index for item in items}):
        members = [(i, item) for i, item in enumerate(items) if item.dataset_index == dataset]
        train_samples = sum(item.subset.num_repeats for _, item in members if not item.is_reg)
        reg_repeats.update(balanced_reg_repeats([(i, item.subset.num_repeats) for i, item in members if item.is_reg], train_samples))
    return train + [i for i in sorted(reg_repeats) for _ in range(reg_repeats[i])]


def epoch_batches(items: list[TrainItem], batch_sizes: list[int], seed: int, epoch: int) -> list[list[int]]:
    """Batches of item indices for `epoch`; `batch_sizes[d]` is the batch size of dataset d."""
    rng = random.Random(f"{seed}-epoch-{epoch}")
    groups: dict[tuple, list[int]] = defaultdict(list)
    for index in expanded_indices(items):
        item = items[index]
        groups[(item.dataset_index, item.bucket)].append(index)
    batches = []
    for key in sorted(groups):
        members = groups[key]
        rng.shuffle(members)
        size = batch_sizes[key[0]]
        batches.extend(members[start : start + size] for start in range(0, len(members), size))
    rng.shuffle(batches)
    return batches


def batches_per_epoch(items: list[TrainItem], batch_sizes: list[int]) -> int:
    """The same for every epoch: bucket sizes do not depend on the shuffle."""
    return len(epoch_batches(items, batch_sizes, seed=0, epoch=0))
