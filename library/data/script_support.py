"""Small helpers shared by the dataset scripts: argument checks, progress bar, final summary."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from library.data.images import IMAGE_EXTENSIONS, SkipLog, glob_images
from library.errors import UserError


def existing_folder(path: str | os.PathLike, what: str = "train_data_dir") -> Path:
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: {what} is not an existing folder")
    return path


def find_images_or_fail(folder: Path, recursive: bool) -> list[Path]:
    """Images in `folder`; none at all is a UserError that says what was looked for."""
    images = glob_images(folder, recursive)
    if not images:
        hint = "" if recursive else "; images in sub-folders need --recursive"
        raise UserError(f"{folder}: no images found ({', '.join(e[1:] for e in IMAGE_EXTENSIONS)}){hint}")
    return images


def progress(iterable: Iterable, total: int | None = None, desc: str = "", unit: str = "img"):
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, dynamic_ncols=True, smoothing=0.1)


def print_summary(title: str, lines: Iterable[str], skipped: SkipLog | None = None) -> None:
    """The report every script ends with: counts first, then each skipped file and why."""
    print(f"--- {title} ---")
    for line in lines:
        print(line)
    if skipped:
        print(f"skipped {len(skipped)} file(s):")
        for line in skipped.summary_lines():
            print(line)


def caption_extension_option(parser, default: str) -> None:
    """--caption_extension, plus kohya's misspelt --caption_extention (accepted, as kohya does)."""
    parser.add_argument("--caption_extension", default=None, help=f"extension of the caption files (default {default})")
    parser.add_argument("--caption_extention", default=None, help="misspelt alias of --caption_extension (kohya compatibility)")
    parser.set_defaults(_caption_extension_default=default)


def resolve_caption_extension(args) -> str:
    from library.data.captions import normalize_extension

    value = args.caption_extension or args.caption_extention or args._caption_extension_default
    return normalize_extension(value)
