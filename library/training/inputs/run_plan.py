"""The plan of a run before any model loads: the dataset summary (kohya's metadata and the printed
overview), optimizer steps per epoch and in total, each sample's seed, and --debug_dataset."""
from __future__ import annotations

import hashlib
import math
import random
from collections import Counter
from pathlib import Path

from library.data.caption_processing import process_caption
from library.data.images import SkipLog
from library.errors import UserError
from library.training.inputs.batch_plan import batches_per_epoch, epoch_batches


def dataset_summary(items, specs, args) -> dict:
    sizes = [spec.batch_size for spec in specs]
    per_epoch = batches_per_epoch(items, sizes)
    tags = {}
    for item in items:
        folder = Path(item.subset.image_dir or ".").name
        counter = tags.setdefault(folder, Counter())
        counter.update(t.strip() for t in item.caption.split(item.subset.caption_separator) if t.strip())
    return {
        "num_train_images": sum(1 for i in items if not i.is_reg),
        "num_reg_images": sum(1 for i in items if i.is_reg),
        "batches_per_epoch": per_epoch,
        "buckets": Counter(i.bucket for i in items),
        "resolution": specs[0].resolution,
        "batch_sizes": sizes,
        "tag_frequency": {k: dict(v) for k, v in tags.items()},
        "dataset_dirs": {Path(s.image_dir or ".").name: {"n_repeats": s.num_repeats, "img_count": sum(1 for i in items if i.subset is s)}
                         for spec in specs for s in spec.subsets},
    }


def batches_per_process(batches: int, world_size: int) -> int:
    """Each process's share of an epoch's batches, as accelerate's even_batches data loader (kohya's) gives
    it: ceil(batches / processes), the last processes repeating the epoch's first batches."""
    return math.ceil(batches / world_size)


def plan_steps(args, summary: dict, world_size: int) -> tuple[int, int]:
    """(optimizer steps per epoch, total steps); max_train_epochs wins over max_train_steps."""
    batches = batches_per_process(summary["batches_per_epoch"], world_size)
    if batches == 0:
        raise UserError("the dataset gives no batch per epoch")
    per_epoch = math.ceil(batches / args.gradient_accumulation_steps)
    total = args.max_train_epochs * per_epoch if args.max_train_epochs else args.max_train_steps
    return per_epoch, total


def print_dataset_summary(summary: dict, args, per_epoch: int, total: int, skipped: SkipLog) -> None:
    print(f"images: {summary['num_train_images']} training, {summary['num_reg_images']} regularisation")
    for folder, info in summary["dataset_dirs"].items():
        print(f"  {folder}: {info['img_count']} images x {info['n_repeats']} repeats")
    print("buckets: " + ", ".join(f"{w}x{h}: {n}" for (w, h), n in sorted(summary["buckets"].items())))
    print(f"batches per epoch: {summary['batches_per_epoch']}; optimizer steps per epoch: {per_epoch}; total steps: {total}"
          f" (~{math.ceil(total / per_epoch)} epochs)")
    for line in skipped.summary_lines():
        print(line)


def sample_seed(run_seed: int, epoch: int, index: int, occurrence: int) -> int:
    """Every random choice for one sample (noise, timestep, flip, caption) derives from this, so
    results do not depend on batch size, accumulation, process count or where a run resumed."""
    digest = hashlib.blake2b(f"{run_seed}/{epoch}/{index}/{occurrence}".encode(), digest_size=6).digest()
    return int.from_bytes(digest, "little")


def epoch_seeds(run_seed: int, batches, epoch: int) -> list[list[int]]:
    """Per-sample seeds; the k-th appearance of an item in an epoch has its own seed."""
    seen: Counter = Counter()
    result = []
    for indices in batches:
        row = []
        for index in indices:
            row.append(sample_seed(run_seed, epoch, index, seen[index]))
            seen[index] += 1
        result.append(row)
    return result


def debug_dataset(items, specs, seed: int | None, batches_to_show: int = 8) -> None:
    """--debug_dataset: print what the first batches of epoch 1 hold (images, buckets, crops and the
    captions as augmented for that step), without loading any model."""
    seed = seed if seed is not None else 0
    batches = epoch_batches(items, [spec.batch_size for spec in specs], seed, 1)
    for number, (indices, seeds) in enumerate(zip(batches, epoch_seeds(seed, batches, 1))):
        if number >= batches_to_show:
            break
        bucket = items[indices[0]].bucket
        print(f"batch {number + 1}: bucket {bucket[0]}x{bucket[1]}")
        for index, item_seed in zip(indices, seeds):
            item = items[index]
            caption = process_caption(item.caption, item.subset, random.Random(item_seed), 1, number, 1)
            print(f"  {item.image_path} {item.placement.original_size[0]}x{item.placement.original_size[1]} "
                  f"crop_ltrb={list(item.placement.crop_ltrb)}{' reg' if item.is_reg else ''}: {caption!r}")
