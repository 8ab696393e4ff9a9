"""Per-step image augmentations that change pixels (so latents cannot be cached): random crops and
kohya's colour augmentation. Randomness comes from the `random.Random` passed in (per sample)."""
from __future__ import annotations

import dataclasses
import random

import numpy as np
from PIL import Image

from library.data.buckets import BucketPlacement

HUE_SHIFT_LIMIT = 8 / 180  # kohya: +-8 on OpenCV's 0-180 hue scale


def random_crop_placement(placement: BucketPlacement, rng: random.Random) -> BucketPlacement:
    """The same resize, with the bucket-sized crop at a random position instead of the centre."""
    slack_w = placement.resized_size[0] - placement.bucket[0]
    slack_h = placement.resized_size[1] - placement.bucket[1]
    left, top = rng.randint(0, slack_w), rng.randint(0, slack_h)
    return dataclasses.replace(placement, crop_ltrb=(left, top, left + placement.bucket[0], top + placement.bucket[1]))


def color_augment(image: Image.Image, rng: random.Random) -> Image.Image:
    """kohya's colour augmentation: a third of the time either a small hue shift or a small gamma
    change (kohya applies the gamma to 0-255 values; here it is applied to 0-1 values, which keeps
    white white instead of clipping it)."""
    if rng.random() > 1 / 3:
        return image
    if rng.random() > 0.5:
        hsv = np.asarray(image.convert("HSV")).copy()
        shift = int(round(rng.uniform(-HUE_SHIFT_LIMIT, HUE_SHIFT_LIMIT) * 255))
        hsv[..., 0] = (hsv[..., 0].astype(np.int16) + shift) % 256
        return Image.fromarray(hsv, "HSV").convert("RGB")
    gamma = rng.uniform(0.95, 1.05)
    array = np.asarray(image, dtype=np.float32) / 255.0
    return Image.fromarray(np.clip(255.0 * array**gamma + 0.5, 0, 255).astype(np.uint8))
