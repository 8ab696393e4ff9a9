"""Which samples form each batch of an epoch: repeats, regularisation balance, one bucket per batch.

The plan of an epoch depends only on (seed, epoch), never on what happened before, so a resumed
run sees exactly the batches an uninterrupted run would have seen.
"""
from __future__ import annotations

import random
from collections import defaultdict

from library.training.train_items import TrainItem


def expanded_indices(items: list[TrainItem]) -> list[int]:
    """Item indices repeated num_repeats times; regularisation samples are cycled in a fixed order
    (kohya's balance) so that every epoch holds as many of them as training samples."""
    train = [i for i, item in enumerate(items) for _ in range(item.subset.num_repeats) if not item.is_reg]
    reg = [i for i, item in enumerate(items) for _ in range(item.subset.num_repeats) if item.is_reg]
    if reg and train:
        reg = [reg[k % len(reg)] for k in range(len(train))]
    return train + reg


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
