"""Pixels of samples without cached latents: decode, crop, augment; in loader worker processes.

`PixelPipeline` turns one sample (item index + its per-sample seed) into the bucket-sized RGB
image, its alpha mask and the crop applied: random / face crops, colour augmentation and the flip
are drawn from `sample_randomness(item, seed)`, so the result is the same wherever it is computed.
`PixelLoader` runs it ahead of the training loop in `max_data_loader_n_workers` processes (a
torch DataLoader whose sampler yields whole batches as (index, seed) lists) and hands the results
to the main process, which only runs the VAE. Cached samples cost the workers nothing.
Workers get the pipeline (item list and flags), never the models.
"""
from __future__ import annotations

import os
import random

import numpy as np
from PIL import Image

from library.data.augmentation import color_augment, face_crop_placement, face_from_file_name, random_crop_placement
from library.data.buckets import resize_and_crop, resize_and_crop_array
from library.data.images import ImageSkipped, alpha_of, composite, open_image


class PixelsUnreadable(Exception):
    """An image that cannot be read any more (the main process records it as broken); a loader
    worker returns it instead of the sample's pixels."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def sample_randomness(item, seed: int) -> tuple[bool, random.Random]:
    """(flip?, the generator of this sample's crop and colour choices), from the sample's seed."""
    rng = random.Random(seed + 1)
    flip = bool(item.subset.flip_aug) and rng.random() < 0.5
    return flip, rng


class PixelPipeline:
    def __init__(self, items, alpha_mask: bool):
        self.items, self.alpha_mask = items, alpha_mask

    def load_crop(self, index: int, placement=None):
        """(bucket-sized RGB image, alpha mask or None) at the item's placement (or `placement`)."""
        item = self.items[index]
        placement = placement or item.placement
        try:
            image = open_image(item.image_path)
        except ImageSkipped as error:
            raise PixelsUnreadable(str(error)) from None
        if image.size != placement.original_size:
            w, h = placement.original_size
            raise PixelsUnreadable(f"changed size since the dataset was scanned ({w}x{h} -> {image.size[0]}x{image.size[1]})")
        alpha = alpha_of(image)
        cropped = resize_and_crop(composite(image), placement)
        mask = None
        if self.alpha_mask:
            w, h = placement.bucket
            mask = resize_and_crop_array(alpha, placement) if alpha is not None else np.ones((h, w), np.float32)
        return cropped, mask

    def augmented(self, index: int, flip: bool, rng: random.Random | None):
        """(image, mask, crop_ltrb, placement) of one training sample as the step sees it (crop,
        colour, flip); PixelsUnreadable when the image cannot be read any more."""
        item = self.items[index]
        placement = item.placement
        face = face_from_file_name(item.image_path) if item.subset.face_crop_aug_range else None
        if face is not None and rng is not None:
            placement = face_crop_placement(placement, face, item.subset.face_crop_aug_range, rng, item.subset.random_crop)
        elif item.subset.random_crop and rng is not None:
            placement = random_crop_placement(placement, rng)
        image, mask = self.load_crop(index, placement)
        if item.subset.color_aug and rng is not None:
            image = color_augment(image, rng)
        if flip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        crop = placement.flipped_crop_ltrb() if flip else placement.crop_ltrb
        return image, mask, tuple(crop), placement


class _Batches:
    """The DataLoader's dataset: a key is one batch, ((index, seed), ...); the value maps each
    uncached (index, seed) to its prepared pixels (or the PixelsUnreadable that stopped them)."""

    def __init__(self, pipeline: PixelPipeline, cached: frozenset):
        self.pipeline, self.cached = pipeline, cached

    def __getitem__(self, key):
        out = {}
        for index, seed in key:
            if index in self.cached:
                continue
            flip, rng = sample_randomness(self.pipeline.items[index], seed)
            try:
                out[(index, seed)] = self.pipeline.augmented(index, flip, rng)
            except PixelsUnreadable as error:
                out[(index, seed)] = error
        return out


class _Keys:
    """The DataLoader's sampler: the current epoch's batches, set before each pass."""

    def __init__(self):
        self.keys: list = []

    def __iter__(self):
        return iter(self.keys)

    def __len__(self):
        return len(self.keys)


def _as_is(batch):
    return batch


class PixelLoader:
    """Prepared pixels of each batch, in order, from worker processes: {(index, seed): pixels}."""

    def __init__(self, pipeline: PixelPipeline, cached: set, workers: int, persistent: bool):
        from torch.utils.data import DataLoader

        self.sampler = _Keys()
        self.workers = workers
        self.loader = DataLoader(_Batches(pipeline, frozenset(cached)), batch_size=None, sampler=self.sampler, num_workers=workers,
                                 persistent_workers=persistent, collate_fn=_as_is)

    def epoch(self, batches, seeds):
        """An iterator over the prepared pixels of `batches` (lists of item indices) with their seeds."""
        self.sampler.keys = [tuple(zip(indices, row)) for indices, row in zip(batches, seeds)]
        return iter(self.loader)


def pixel_loader(pipeline: PixelPipeline, cached: set, args) -> PixelLoader | None:
    """A loader when some samples need pixels every step and workers are configured (kohya caps the
    worker count at the CPU count); None: the main process prepares them as it goes."""
    workers = min(args.max_data_loader_n_workers or 0, os.cpu_count() or 1)
    if workers <= 0 or len(cached) >= len(pipeline.items):
        return None
    return PixelLoader(pipeline, cached, workers, bool(args.persistent_data_loader_workers))
