"""Aspect-ratio buckets, as kohya sd-scripts builds and selects them, plus the resize and crop.

A bucket is a training resolution (w, h). `BucketManager.place(w, h)` decides, for one image,
the bucket, the size it is resized to (covering the bucket) and the centre crop that is cut out.
`crop_ltrb` is the crop actually applied, in resized-image pixels (DESIGN.md 4.3): an 800x1200
image in a 1024x1024 bucket is resized to 1024x1536 and cropped to (0, 256, 1024, 1280). kohya
stores a letterbox-style value there instead (left 170, top 0 for that image); SDXL's crop
conditioning means the crop that was made, as in the SDXL paper and diffusers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from library.errors import UserError

Size = tuple[int, int]


def make_bucket_resolutions(max_reso: Size, min_size: int = 256, max_size: int = 1024, divisible: int = 64) -> list[Size]:
    """kohya's bucket list: every (w, h) on the `divisible` grid with w*h <= the area of `max_reso`.

    For each width from min_size to max_size, the largest grid height that keeps the area and lies
    within [min_size, max_size] is taken, in both orientations, plus the square bucket.
    (1024x1024, min 256, max 2048, steps 64) gives kohya's 41 buckets.
    """
    max_area = max_reso[0] * max_reso[1]
    side = int(math.sqrt(max_area) // divisible) * divisible
    resolutions = {(side, side)}
    for width in range(min_size, max_size + 1, divisible):
        height = min(max_size, int((max_area // width) // divisible) * divisible)
        if height >= min_size:
            resolutions.add((width, height))
            resolutions.add((height, width))
    return sorted(resolutions)


@dataclass(frozen=True)
class BucketPlacement:
    """How one image becomes a training sample of exactly `bucket` pixels."""

    original_size: Size  # (w, h) of the image as loaded (EXIF orientation applied)
    bucket: Size  # (w, h) training resolution
    resized_size: Size  # (w, h) after resizing; covers the bucket in both directions
    crop_ltrb: tuple[int, int, int, int]  # crop applied to the resized image
    ar_error: float  # bucket aspect ratio minus image aspect ratio

    @property
    def crop_top_left(self) -> tuple[int, int]:
        """(top, left), the order SDXL's time ids use."""
        return self.crop_ltrb[1], self.crop_ltrb[0]

    def flipped_crop_ltrb(self) -> tuple[int, int, int, int]:
        """The crop of the horizontally flipped image, for flip augmentation."""
        left, top, right, bottom = self.crop_ltrb
        return self.resized_size[0] - right, top, self.resized_size[0] - left, bottom


# A sample that is mostly invented (a tiny image blown up) or mostly cut away (a panorama in a
# near-square bucket) teaches little of the picture: worth one notice naming such images.
ENLARGE_LIMIT = 2.0
CROP_KEEP_LIMIT = 0.5


def placement_problem(placement: BucketPlacement) -> str | None:
    """'1x1 enlarged 32.0x to 32x32' or '10000x100: the 128x32 crop keeps 4% of its width', else None."""
    (w, h), (rw, rh), (bw, bh) = placement.original_size, placement.resized_size, placement.bucket
    scale = max(rw / w, rh / h)
    if scale > ENLARGE_LIMIT:
        return f"{w}x{h} enlarged {scale:.1f}x to {rw}x{rh}"
    keep_w, keep_h = bw / rw, bh / rh
    if min(keep_w, keep_h) < CROP_KEEP_LIMIT:
        axis, keep = ("width", keep_w) if keep_w <= keep_h else ("height", keep_h)
        return f"{w}x{h}: the {bw}x{bh} crop keeps {keep:.0%} of its {axis}"
    return None


def extreme_placements_notice(where, named_placements) -> str | None:
    """One line about the images of `where` whose samples are mostly enlarged or cropped away."""
    problems = [(name, problem) for name, placement in named_placements if (problem := placement_problem(placement))]
    if not problems:
        return None
    examples = "; ".join(f"{name} {problem}" for name, problem in problems[:3]) + ("; ..." if len(problems) > 3 else "")
    return (f"{where}: {len(problems)} image(s) are enlarged more than {ENLARGE_LIMIT:g}x or lose more than half a side to "
            f"the bucket crop ({examples}); use larger or pre-cropped images, or widen min_bucket_reso/max_bucket_reso")


def center_crop_ltrb(resized_size: Size, bucket: Size) -> tuple[int, int, int, int]:
    """Centre crop of `bucket` from an image of `resized_size` (floor on odd margins, as kohya)."""
    left = (resized_size[0] - bucket[0]) // 2
    top = (resized_size[1] - bucket[1]) // 2
    return left, top, left + bucket[0], top + bucket[1]


def cover_size(width: int, height: int, bucket: Size) -> Size:
    """Size of (width, height) scaled, aspect kept, to cover `bucket` (kohya's rounding)."""
    # Match the side that is relatively shorter than the bucket; the other side then overhangs.
    scale = bucket[1] / height if width / height > bucket[0] / bucket[1] else bucket[0] / width
    return int(width * scale + 0.5), int(height * scale + 0.5)


def place_in_bucket(width: int, height: int, bucket: Size) -> BucketPlacement:
    """Resize (width, height) to cover `bucket`, then centre-crop it to the bucket."""
    return _centre_placement(width, height, bucket, cover_size(width, height, bucket))


def _centre_placement(width: int, height: int, bucket: Size, resized: Size) -> BucketPlacement:
    # Rounding can leave the resized side one pixel short of the bucket; never crop past the edge.
    resized = (max(resized[0], bucket[0]), max(resized[1], bucket[1]))
    return BucketPlacement(
        original_size=(width, height),
        bucket=bucket,
        resized_size=resized,
        crop_ltrb=center_crop_ltrb(resized, bucket),
        ar_error=bucket[0] / bucket[1] - width / height,
    )


def validate_bucket_options(max_reso: Size, min_size: int, max_size: int, reso_steps: int) -> None:
    """UserError for option combinations that cannot produce SDXL buckets."""
    if reso_steps <= 0 or reso_steps % 32 != 0:
        raise UserError(f"--bucket_reso_steps {reso_steps}: must be a positive multiple of 32 for SDXL (64 is usual)")
    if min(max_reso) <= 0 or max_reso[0] % 8 or max_reso[1] % 8:
        raise UserError(f"--max_resolution {max_reso[0]},{max_reso[1]}: both sides must be positive multiples of 8 (e.g. 1024,1024)")
    if min_size > max_size:
        raise UserError(f"--min_bucket_reso {min_size} is larger than --max_bucket_reso {max_size}; swap them")
    if min_size % reso_steps or max_size % reso_steps:
        raise UserError(
            f"--min_bucket_reso {min_size} / --max_bucket_reso {max_size}: must be multiples of --bucket_reso_steps {reso_steps}"
        )


def check_bucket_options(spec, notices: list) -> None:
    """The trainer's bucket checks, as kohya's dataset makes them (enable_bucket only): for SDXL
    bucket_reso_steps must be a multiple of 32; min/max_bucket_reso that are not multiples of it are
    rounded (min down, max up) with a notice; the resolution must lie within [min, max]. `spec` is a
    DatasetSpec (resolution, min_bucket_reso, max_bucket_reso, bucket_reso_steps), adjusted in place."""
    steps = spec.bucket_reso_steps
    if steps <= 0 or steps % 32:
        raise UserError(f"bucket_reso_steps = {steps}: must be a positive multiple of 32 for SDXL (64 is usual)")
    if spec.min_bucket_reso % steps:
        adjusted = spec.min_bucket_reso - spec.min_bucket_reso % steps
        notices.append(f"min_bucket_reso {spec.min_bucket_reso} is not a multiple of bucket_reso_steps {steps}: using {adjusted} (as kohya)")
        spec.min_bucket_reso = adjusted
    if spec.max_bucket_reso % steps:
        adjusted = spec.max_bucket_reso + steps - spec.max_bucket_reso % steps
        notices.append(f"max_bucket_reso {spec.max_bucket_reso} is not a multiple of bucket_reso_steps {steps}: using {adjusted} (as kohya)")
        spec.max_bucket_reso = adjusted
    width, height = spec.resolution
    if min(width, height) < spec.min_bucket_reso:
        raise UserError(f"min_bucket_reso = {spec.min_bucket_reso} is larger than the shorter side of resolution {width},{height}; "
                        "lower min_bucket_reso or raise resolution")
    if max(width, height) > spec.max_bucket_reso:
        raise UserError(f"max_bucket_reso = {spec.max_bucket_reso} is smaller than the longer side of resolution {width},{height}; "
                        "raise max_bucket_reso or lower resolution")


def parse_resolution(text: str, option: str = "--max_resolution") -> Size:
    """"1024" or "1024,1024" -> (1024, 1024)."""
    try:
        parts = [int(p) for p in str(text).replace("x", ",").split(",") if p.strip()]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2:
        raise UserError(f"{option} {text!r}: give 'width,height' (e.g. \"1024,1024\") or one number")
    return parts[0], parts[1]


class BucketManager:
    """Chooses buckets the way kohya's BucketManager does.

    Default (upscale allowed): predefined buckets from `make_bucket_resolutions`; an image whose
    size is itself a bucket keeps it, otherwise it takes the bucket with the closest aspect ratio
    and is scaled so that it covers the bucket. `no_upscale`: images are only shrunk (to the max
    area when larger) and the bucket is the resized size rounded down to `reso_steps`.
    """

    def __init__(self, no_upscale: bool, max_reso: Size, min_size: int = 256, max_size: int = 1024, reso_steps: int = 64):
        self.no_upscale = no_upscale
        self.max_reso = tuple(max_reso)
        self.max_area = max_reso[0] * max_reso[1]
        self.min_size, self.max_size, self.reso_steps = min_size, max_size, reso_steps
        self.resolutions: list[Size] = [] if no_upscale else make_bucket_resolutions(max_reso, min_size, max_size, reso_steps)
        self._resolution_set = set(self.resolutions)
        self._aspect_ratios = np.array([w / h for w, h in self.resolutions])

    @classmethod
    def single(cls, resolution: Size, reso_steps: int = 64) -> "BucketManager":
        """Bucketing disabled: every image is resized to cover `resolution` and centre-cropped to it."""
        manager = cls(False, resolution, min(resolution), max(resolution), reso_steps)
        manager.resolutions = [tuple(resolution)]
        manager._resolution_set = {tuple(resolution)}
        manager._aspect_ratios = np.array([resolution[0] / resolution[1]])
        return manager

    def _round_to_steps(self, value: float) -> int:
        value = int(value + 0.5)
        return value - value % self.reso_steps

    def _select_predefined(self, width: int, height: int) -> tuple[Size, Size]:
        aspect = width / height
        if (width, height) in self._resolution_set:
            bucket = (width, height)
        else:
            bucket = self.resolutions[int(np.abs(self._aspect_ratios - aspect).argmin())]
        return bucket, cover_size(width, height, bucket)

    def _select_no_upscale(self, width: int, height: int) -> tuple[Size, Size]:
        aspect = width / height
        if width * height > self.max_area:
            # Shrink to the max area keeping the aspect ratio, rounding the side that distorts least.
            target_w = math.sqrt(self.max_area * aspect)
            target_h = self.max_area / target_w
            w_rounded = self._round_to_steps(target_w)
            h_for_w = self._round_to_steps(w_rounded / aspect)
            h_rounded = self._round_to_steps(target_h)
            w_for_h = self._round_to_steps(h_rounded * aspect)
            error_w = abs(w_rounded / h_for_w - aspect) if h_for_w else math.inf
            error_h = abs(w_for_h / h_rounded - aspect) if h_rounded else math.inf
            if error_w < error_h:
                resized = (w_rounded, int(w_rounded / aspect + 0.5))
            else:
                resized = (int(h_rounded * aspect + 0.5), h_rounded)
        else:
            resized = (width, height)
        bucket = (resized[0] - resized[0] % self.reso_steps, resized[1] - resized[1] % self.reso_steps)
        return bucket, resized

    def place(self, width: int, height: int) -> BucketPlacement:
        """Bucket, resize and crop for an image of (width, height); ValueError if it is too small."""
        if self.no_upscale:
            bucket, resized = self._select_no_upscale(width, height)
        else:
            bucket, resized = self._select_predefined(width, height)
        if bucket[0] <= 0 or bucket[1] <= 0:
            raise ValueError(f"{width}x{height} is smaller than one bucket step ({self.reso_steps} px) without upscaling")
        return _centre_placement(width, height, bucket, resized)


def resize_and_crop(image: Image.Image, placement: BucketPlacement) -> Image.Image:
    """Apply a placement to an image of `placement.original_size`.

    Downscaling uses a box (area-average) filter, like the OpenCV INTER_AREA that kohya uses;
    upscaling uses Lanczos, which keeps edges sharper than area interpolation does.
    """
    if image.size != placement.original_size:
        raise ValueError(f"image is {image.size}, placement was computed for {placement.original_size}")
    if image.size != placement.resized_size:
        shrinking = placement.resized_size[0] * placement.resized_size[1] < image.size[0] * image.size[1]
        image = image.resize(placement.resized_size, Image.BOX if shrinking else Image.LANCZOS)
    return image.crop(placement.crop_ltrb)


def resize_and_crop_array(array: np.ndarray, placement: BucketPlacement) -> np.ndarray:
    """Same as `resize_and_crop` for a float [h, w] map in 0-1 (e.g. an alpha mask)."""
    mask = Image.fromarray(np.asarray(array, dtype=np.float32))
    if mask.size != placement.resized_size:
        mask = mask.resize(placement.resized_size, Image.BILINEAR)
    return np.clip(np.asarray(mask.crop(placement.crop_ltrb), dtype=np.float32), 0.0, 1.0)
