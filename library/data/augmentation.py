"""Per-step image augmentations that change pixels (so latents cannot be cached): random crops,
face-centred crops and kohya's colour augmentation. Randomness comes from the `random.Random` passed in (per sample)."""
from __future__ import annotations

import dataclasses
import random
from pathlib import Path

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


def face_from_file_name(path) -> tuple[int, int, int, int] | None:
    """kohya's face-crop convention: `<name>_<cx>_<cy>_<w>_<h>.png` (as written by face-detect tools)."""
    parts = Path(path).stem.split("_")
    try:
        cx, cy, w, h = (int(v) for v in parts[-4:])
    except ValueError:
        return None
    return (cx, cy, w, h) if len(parts) > 4 and w > 0 and h > 0 else None


def face_crop_placement(placement: BucketPlacement, face: tuple[int, int, int, int], aug_range: tuple[float, float],
                        rng: random.Random, random_offset: bool = False) -> BucketPlacement:
    """kohya's face_crop_aug_range: scale the image so the face spans 1/high .. 1/low of the training
    size, then crop a bucket-sized window centred on the face (randomly shifted with random_crop)."""
    width, height = placement.original_size
    bucket_w, bucket_h = placement.bucket
    face_cx, face_cy, face_w, face_h = face
    size = min(bucket_w, bucket_h)
    min_scale = max(bucket_h / height, bucket_w / width)  # never smaller than the bucket
    low = min(1.0, max(min_scale, size / (max(face_w, face_h) * aug_range[1])))
    high = min(1.0, max(low, size / (max(face_w, face_h) * aug_range[0])))
    scale = max(rng.uniform(low, high) if high > low else low, min_scale)
    new_w, new_h = max(bucket_w, int(width * scale + 0.5)), max(bucket_h, int(height * scale + 0.5))
    origin = []
    for target, length, centre in ((bucket_w, new_w, int(face_cx * scale + 0.5)), (bucket_h, new_h, int(face_cy * scale + 0.5))):
        start = centre - target // 2
        if random_offset:
            spread = max(length - centre, centre)
            start += rng.randint(0, spread) + rng.randint(0, spread) - spread
        origin.append(max(0, min(start, length - target)))
    left, top = origin
    return dataclasses.replace(placement, resized_size=(new_w, new_h), crop_ltrb=(left, top, left + bucket_w, top + bucket_h))
