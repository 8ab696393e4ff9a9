"""Bucket generation and selection against kohya's numbers, and the crop that is recorded."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from library.data.buckets import (
    BucketManager,
    make_bucket_resolutions,
    parse_resolution,
    place_in_bucket,
    resize_and_crop,
    validate_bucket_options,
)
from library.errors import UserError

# kohya sd-scripts, make_bucket_resolutions((1024, 1024), 256, 2048, 64), sorted.
KOHYA_41 = [
    (256, 2048), (320, 2048), (384, 2048), (448, 2048), (512, 1856), (512, 1920), (512, 1984), (512, 2048),
    (576, 1664), (576, 1728), (576, 1792), (640, 1536), (640, 1600), (704, 1408), (704, 1472), (768, 1280),
    (768, 1344), (832, 1216), (896, 1152), (960, 1088), (1024, 1024), (1088, 960), (1152, 896), (1216, 832),
    (1280, 768), (1344, 768), (1408, 704), (1472, 704), (1536, 640), (1600, 640), (1664, 576), (1728, 576),
    (1792, 576), (1856, 512), (1920, 512), (1984, 512), (2048, 256), (2048, 320), (2048, 384), (2048, 448),
    (2048, 512),
]


def test_kohya_41_buckets():
    buckets = make_bucket_resolutions((1024, 1024), 256, 2048, 64)
    assert len(buckets) == 41
    assert buckets == KOHYA_41
    assert all(w * h <= 1024 * 1024 and w % 64 == 0 and h % 64 == 0 for w, h in buckets)


def test_default_sd_scripts_buckets_for_512():
    # SD1.5 defaults (512, min 256, max 1024, steps 64): symmetric, square included, area bound kept.
    buckets = make_bucket_resolutions((512, 512), 256, 1024, 64)
    assert (512, 512) in buckets and (256, 1024) in buckets and (1024, 256) in buckets
    assert all((h, w) in buckets for w, h in buckets)
    assert max(w * h for w, h in buckets) == 512 * 512


@pytest.mark.parametrize("size", [(800, 1200), (1920, 1080), (333, 3000), (1000, 1001), (4000, 900), (640, 640)])
def test_every_image_lands_in_the_closest_aspect_bucket(size):
    manager = BucketManager(False, (1024, 1024), 256, 2048, 64)
    placement = manager.place(*size)
    aspect = size[0] / size[1]
    best = min(abs(w / h - aspect) for w, h in KOHYA_41)
    assert abs(placement.bucket[0] / placement.bucket[1] - aspect) == pytest.approx(best)
    assert placement.bucket in KOHYA_41
    # The resized image covers the bucket exactly along one side and the crop lies inside it.
    rw, rh = placement.resized_size
    bw, bh = placement.bucket
    assert rw >= bw and rh >= bh and (rw == bw or rh == bh)
    l, t, r, b = placement.crop_ltrb
    assert (r - l, b - t) == (bw, bh) and l >= 0 and t >= 0 and r <= rw and b <= rh


def test_800x1200_lands_in_832x1216():
    placement = BucketManager(False, (1024, 1024), 256, 2048, 64).place(800, 1200)
    assert placement.bucket == (832, 1216)
    assert placement.resized_size == (832, 1248)
    assert placement.crop_ltrb == (0, 16, 832, 1232)


def test_worked_crop_example_of_design():
    # DESIGN.md 4.3: 800x1200 in a 1024x1024 bucket -> 1024x1536, cropped 256 px from the top.
    placement = place_in_bucket(800, 1200, (1024, 1024))
    assert placement.resized_size == (1024, 1536)
    assert placement.crop_ltrb == (0, 256, 1024, 1280)
    assert placement.crop_top_left == (256, 0)
    # The same through a manager whose only bucket is 1024x1024.
    only_square = BucketManager(False, (1024, 1024), 1024, 1024, 64)
    assert only_square.resolutions == [(1024, 1024)]
    assert only_square.place(800, 1200).crop_ltrb == (0, 256, 1024, 1280)


def test_exact_bucket_size_is_kept():
    placement = BucketManager(False, (1024, 1024), 256, 2048, 64).place(1216, 832)
    assert placement.bucket == (1216, 832) and placement.resized_size == (1216, 832)
    assert placement.crop_ltrb == (0, 0, 1216, 832)


def test_bucket_no_upscale():
    manager = BucketManager(True, (1024, 1024), 256, 2048, 64)
    small = manager.place(300, 500)  # smaller than the max area: never enlarged, cropped to steps
    assert small.resized_size == (300, 500) and small.bucket == (256, 448)
    assert small.crop_ltrb == (22, 26, 278, 474)
    big = manager.place(3000, 2000)  # shrunk to ~1 MP with the aspect ratio kept
    assert big.bucket[0] * big.bucket[1] <= 1024 * 1024
    assert big.resized_size[0] >= big.bucket[0] and big.resized_size[1] >= big.bucket[1]
    assert abs(big.resized_size[0] / big.resized_size[1] - 1.5) < 0.01
    assert big.bucket == (1216, 832)
    with pytest.raises(ValueError, match="smaller than one bucket step"):
        manager.place(40, 500)


def test_resize_and_crop_cuts_the_recorded_region():
    # A vertical gradient: after the crop, the top row must come from row `top` of the resized image.
    rows = np.repeat(np.arange(150, dtype=np.uint8)[:, None], 100, axis=1)
    image = Image.fromarray(np.stack([rows] * 3, axis=-1))
    placement = place_in_bucket(100, 150, (128, 128))
    assert placement.resized_size == (128, 192) and placement.crop_ltrb == (0, 32, 128, 160)
    out = resize_and_crop(image, placement)
    assert out.size == (128, 128)
    resized = np.asarray(image.resize((128, 192), Image.LANCZOS))
    assert np.array_equal(np.asarray(out), resized[32:160])
    assert placement.flipped_crop_ltrb() == (0, 32, 128, 160)


def test_option_validation():
    with pytest.raises(UserError, match="multiple of 32"):
        validate_bucket_options((1024, 1024), 256, 2048, 48)
    with pytest.raises(UserError, match="swap"):
        validate_bucket_options((1024, 1024), 2048, 256, 64)
    validate_bucket_options((1024, 1024), 256, 2048, 64)
    assert parse_resolution("1024,768") == (1024, 768)
    assert parse_resolution("512") == (512, 512)
    with pytest.raises(UserError, match="max_resolution"):
        parse_resolution("big")
