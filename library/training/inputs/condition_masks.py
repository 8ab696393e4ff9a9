"""Loss masks from `conditioning_data_dir`: kohya's masked_loss with a folder of mask images.

As in kohya, every training image of a subset with a conditioning_data_dir needs a mask with the
same stem (any image extension) in that folder; the mask's red channel, scaled to 0-1, weights the
loss (a grayscale mask: white trains, black is ignored). For DreamBooth folders
(train_data_dir/10_ohwx/img.png) the mask may also sit in a sub-folder of the same name
(conditioning_data_dir/10_ohwx/img.png).

The mask is resized, cropped and flipped exactly like its image, so it covers the same pixels (kohya
stretches it straight to the bucket size; see docs/kohya_differences.md). A mask whose aspect ratio
differs from its image's is an error; a same-shaped smaller or larger one is resized.

Every mask is decoded and checked when the dataset is built, before any model loads, so a wrong or
truncated mask stops the run at its start and not at the batch that uses it hours later. A mask
that breaks during the run anyway (replaced or cut short meanwhile) raises `MaskUnusable`, and the
trainer leaves its image out like an image that broke (library/training/inputs/latent_source.py).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from library.data.buckets import BucketPlacement, resize_and_crop_array
from library.data.images import ImageSkipped, glob_images, open_image
from library.errors import UserError

ASPECT_TOLERANCE = 0.01


class MaskUnusable(UserError):
    """A mask file cannot be used for its image; `reason` says why (without the path)."""

    def __init__(self, path: Path, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path}: {reason}")


def _read_mask(path: Path, image_size: tuple[int, int]) -> tuple[Image.Image, np.ndarray]:
    """The decoded mask and its red channel in 0-1; MaskUnusable when unreadable or of another aspect ratio."""
    try:
        image = open_image(path)
    except ImageSkipped as error:
        raise MaskUnusable(path, f"mask cannot be read ({error})") from None
    width, height = image_size
    if image.size != (width, height):
        mask_aspect, image_aspect = image.size[0] / image.size[1], width / height
        if abs(mask_aspect / image_aspect - 1) > ASPECT_TOLERANCE:
            raise MaskUnusable(path, f"mask is {image.size[0]}x{image.size[1]} but its image is {width}x{height}; "
                                     "a mask must have its image's aspect ratio")
    return image, np.asarray(image.getchannel("R"), dtype=np.float32) / 255.0


def check_masks(items) -> None:
    """Decode every attached mask and check its size against its image's; one error naming how many
    are unusable, the first three and the rule, before any model loads."""
    problems = []
    for item in items:
        if getattr(item, "mask_path", None) is None:
            continue
        try:
            _read_mask(item.mask_path, item.placement.original_size)
        except MaskUnusable as error:
            problems.append(error)
    if problems:
        examples = "; ".join(f"{p.path.name}: {p.reason.split(';')[0]}" for p in problems[:3])
        folder = problems[0].path.parent
        raise UserError(f"{folder}: {len(problems)} mask(s) cannot be used ({examples}); a mask must be a readable image with "
                        "its image's aspect ratio (any size: it is resized like the image). Fix or replace them")


def _masks_by_stem(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in glob_images(folder):
        found.setdefault(path.stem, path)
    return found


def attach_masks(items, masked_loss: bool, notices: list) -> None:
    """Set `item.mask_path` for items whose subset has a conditioning_data_dir; missing masks are an
    error naming the folder and the first images, masks without an image are reported in a notice."""
    by_folder: dict[Path, list] = {}
    for item in items:
        folder = getattr(item.subset, "conditioning_data_dir", None)
        if folder:
            by_folder.setdefault(Path(folder), []).append(item)
    if not by_folder:
        return
    if not masked_loss:
        notices.append(f"conditioning_data_dir ({', '.join(str(f) for f in by_folder)}) is used only with masked_loss = true; "
                       "training without masks")
        return
    for folder, folder_items in by_folder.items():
        if not folder.is_dir():
            raise UserError(f"{folder}: conditioning_data_dir folder not found")
        flat = _masks_by_stem(folder)
        nested: dict[str, dict[str, Path]] = {}
        missing, used = [], set()
        for item in folder_items:
            parent = Path(item.image_path).parent.name
            if parent not in nested:
                sub = folder / parent
                nested[parent] = _masks_by_stem(sub) if parent and sub.is_dir() else {}
            stem = Path(item.image_path).stem
            mask = nested[parent].get(stem) or flat.get(stem)
            if mask is None:
                missing.append(Path(item.image_path).name)
                continue
            item.mask_path = mask
            used.add(mask)
        if missing:
            raise UserError(f"{folder}: no mask for {len(missing)} training image(s) (e.g. {', '.join(missing[:3])}); "
                            "masked_loss needs <image stem>.png (or .jpg, .webp ...) for every image in conditioning_data_dir")
        extra = [p for p in flat.values() if p not in used]
        if extra:
            notices.append(f"{folder}: {len(extra)} mask(s) match no training image (e.g. {extra[0].name}); they are not used")
        check_masks(folder_items)


def load_mask(path: Path, placement: BucketPlacement) -> np.ndarray:
    """float32 [bucket height, bucket width] in 0-1, placed like the image of `placement`; MaskUnusable
    when the file cannot be read or does not fit its image (any more)."""
    image, red = _read_mask(path, placement.original_size)
    width, height = placement.original_size
    if image.size != (width, height):
        red = np.asarray(Image.fromarray(red).resize((width, height), Image.BILINEAR), dtype=np.float32)
    return resize_and_crop_array(red, placement)
