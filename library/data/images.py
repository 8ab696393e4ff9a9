"""Finding and loading training images robustly.

Every loader returns 8-bit RGB (plus the alpha channel when asked), with the EXIF orientation
applied, so a photo taken in portrait mode is portrait everywhere in the pipeline. Files that
cannot be used raise `ImageSkipped` with a short reason; scripts collect those in a `SkipLog`
and print them in their summary instead of stopping at the first bad file.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# 100 megapixels (e.g. 10000x10000): far beyond any training resolution, and decoding such a file
# costs 300+ MB of RAM per worker. PIL's own bomb check (179 MP) would only trigger later.
DEFAULT_MAX_PIXELS = 100_000_000
WHITE = (255, 255, 255)
_EXIF_ORIENTATION = 0x0112
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}  # transposes and 90-degree rotations swap width and height
# Our own pixel limit (checked from the header) replaces PIL's bomb warning; its hard error above
# ~179 MP is still caught below and reported as "too large".
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class ImageSkipped(Exception):
    """The file cannot be used as a training image; str(error) is the reason."""


@dataclass
class SkipLog:
    """Files left out of a run, with why; printed in a script's final summary."""

    entries: list[tuple[Path, str]] = field(default_factory=list)

    def add(self, path, reason: str) -> None:
        self.entries.append((Path(path), reason))

    def __len__(self) -> int:
        return len(self.entries)

    def summary_lines(self) -> list[str]:
        return [f"  skipped {path}: {reason}" for path, reason in self.entries]


def is_image_file(path: Path) -> bool:
    # Our own temporary files (".name.xxx.tmp") and hidden files are never images to train on.
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def glob_images(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Image files in `folder` (any case of png/jpg/jpeg/webp/bmp), sorted for a stable order."""
    folder = Path(folder)
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in candidates if p.is_file() and is_image_file(p))


def _check_header(image: Image.Image, path: Path, max_pixels: int) -> None:
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageSkipped(f"invalid size {width}x{height}")
    if width * height > max_pixels:
        raise ImageSkipped(
            f"too large ({width}x{height} = {width * height / 1e6:.0f} MP, limit {max_pixels / 1e6:.0f} MP); downscale it"
        )


def _open_checked(path: Path, max_pixels: int) -> Image.Image:
    """Open and fully decode `path`; every way a file can be broken becomes ImageSkipped."""
    try:
        if path.stat().st_size == 0:
            raise ImageSkipped("empty file (0 bytes)")
    except OSError as error:
        raise ImageSkipped(f"cannot read ({error.strerror or error})") from None
    with _broken_file_is_skipped("corrupt or truncated"):
        image = Image.open(path)
        _check_header(image, path, max_pixels)
        image.load()  # decode now, so truncation is found here and not in the VAE loop
    return image


@contextlib.contextmanager
def _broken_file_is_skipped(what: str):
    """Turn every exception PIL raises for a broken file into ImageSkipped with a short reason."""
    try:
        yield
    except ImageSkipped:
        raise
    except Image.DecompressionBombError:
        raise ImageSkipped(f"too large (over PIL's limit of {Image.MAX_IMAGE_PIXELS * 2 / 1e6:.0f} MP); downscale it") from None
    except UnidentifiedImageError:
        raise ImageSkipped("not an image (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageSkipped(f"{what} ({error})") from None


def _sixteen_bit_to_eight(image: Image.Image) -> Image.Image:
    """Scale 16/32-bit integer and float grayscale to 8 bits (PIL's convert would clip at 255)."""
    values = np.asarray(image)
    if image.mode == "F":
        top = 1.0 if values.size and float(np.nanmax(values)) <= 1.0 else 255.0
        scaled = np.clip(np.nan_to_num(values) / top * 255.0, 0, 255)
    else:
        scaled = values.astype(np.float64) / 65535.0 * 255.0  # 16-bit range, as PNG stores it
    return Image.fromarray(np.round(scaled).astype(np.uint8))


def normalize_mode(image: Image.Image) -> Image.Image:
    """Any PIL mode -> "RGB", or "RGBA" when the image has transparency."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return _sixteen_bit_to_eight(image).convert("RGB")
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode in ("P", "L", "RGB") and "transparency" in image.info
    )
    if has_alpha:
        return image.convert("RGBA")
    return image if image.mode == "RGB" else image.convert("RGB")


def open_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decoded image, EXIF orientation applied, mode "RGB" or "RGBA"; raises ImageSkipped."""
    path = Path(path)
    image = _open_checked(path, max_pixels)
    try:
        image = ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError):
        pass  # a broken EXIF block only loses the orientation; the pixels are fine
    return normalize_mode(image)


def composite(image: Image.Image, background=WHITE) -> Image.Image:
    """RGB image; transparent pixels are blended onto `background` (white, as the WD14 tagger expects)."""
    if image.mode != "RGBA":
        return image if image.mode == "RGB" else image.convert("RGB")
    canvas = Image.new("RGBA", image.size, tuple(background) + (255,))
    canvas.alpha_composite(image)
    return canvas.convert("RGB")


def alpha_of(image: Image.Image) -> np.ndarray | None:
    """The alpha channel as float32 [h, w] in 0-1, or None for an opaque image."""
    if image.mode != "RGBA":
        return None
    return np.asarray(image.getchannel("A"), dtype=np.float32) / 255.0


def load_rgb(path: str | os.PathLike, background=WHITE, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """The usual entry point: an 8-bit RGB image ready for resizing; raises ImageSkipped."""
    return composite(open_image(path, max_pixels), background)


def read_image_size(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) as the image will be used (after EXIF rotation), reading only the header."""
    path = Path(path)
    with _broken_file_is_skipped("corrupt or unreadable"):
        if path.stat().st_size == 0:
            raise ImageSkipped("empty file (0 bytes)")
        with Image.open(path) as image:
            _check_header(image, path, max_pixels)
            width, height = image.size
            try:
                orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
            except (OSError, ValueError, SyntaxError):
                orientation = 1
    return (height, width) if orientation in _SWAPPING_ORIENTATIONS else (width, height)


T = TypeVar("T")


def map_images(
    paths: Sequence[Path], load: Callable[[Path], T], workers: int | None = None
) -> Iterator[tuple[Path, T | None, str | None]]:
    """Yield (path, load(path) or None, skip reason or None) in input order.

    With `workers` > 0, decoding runs in a thread pool (PIL releases the GIL while decoding), a
    bounded window ahead of the consumer so memory stays flat on large folders.
    """

    def attempt(path: Path):
        try:
            return path, load(path), None
        except ImageSkipped as error:
            return path, None, str(error)

    if not workers or workers <= 0:
        yield from (attempt(p) for p in paths)
        return
    window = max(2, workers * 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = []
        for path in paths:
            pending.append(pool.submit(attempt, path))
            if len(pending) >= window:
                yield pending.pop(0).result()
        for future in pending:
            yield future.result()


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
