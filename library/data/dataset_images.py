"""Which images (and captions) a training config's dataset holds, as the caching tools see it.

Fine-tuning style (in_json): the metadata keys, with caption + tags as kohya joins them.
DreamBooth style: images in train_data_dir and its `<repeats>_<class tokens>` sub-folders, each
captioned by its caption file or, lacking one, by the folder's class tokens.
"""
from __future__ import annotations

import re
from pathlib import Path

from library.data.captions import caption_path, read_caption
from library.data.images import glob_images
from library.data.metadata import keys_for_images, load_metadata
from library.errors import UserError

_DREAMBOOTH_FOLDER = re.compile(r"^(\d+)_(.*)$")


def metadata_caption(entry: dict) -> str:
    """kohya's fine-tuning caption: the caption, then the tags, joined by ", "."""
    caption, tags = entry.get("caption"), entry.get("tags")
    if caption is None:
        return tags or ""
    return f"{caption}, {tags}" if tags else caption


def finetune_images(train_dir: Path, in_json: str) -> tuple[dict[str, Path], dict[str, dict]]:
    """{key: image} for every metadata key that has an image, and the metadata."""
    metadata = load_metadata(in_json)
    by_stem = keys_for_images(glob_images(train_dir, recursive=True), full_path=False)
    images = {}
    for key in metadata:
        path = Path(key)
        found = path if path.suffix and path.is_file() else by_stem.get(key)
        if found is not None:
            images[key] = found
    if not images:
        raise UserError(f"{in_json}: none of its {len(metadata)} keys matches an image in {train_dir}")
    return images, metadata


def dreambooth_images(train_dir: Path, caption_extension: str) -> tuple[dict[str, Path], dict[str, str]]:
    """{key: image} and {key: caption} for `<repeats>_<class>` sub-folders (or the folder itself)."""
    folders = [p for p in sorted(train_dir.iterdir()) if p.is_dir() and _DREAMBOOTH_FOLDER.match(p.name)] or [train_dir]
    images, captions = {}, {}
    for folder in folders:
        match = _DREAMBOOTH_FOLDER.match(folder.name)
        class_tokens = match.group(2) if match else ""
        for image in glob_images(folder):
            key = str(image)
            images[key] = image
            captions[key] = read_caption(caption_path(image, caption_extension)) or class_tokens
    if not images:
        raise UserError(f"{train_dir}: no images found in it or in <repeats>_<class> sub-folders")
    if not any(caption_path(p, caption_extension).exists() for p in images.values()):
        other = ".txt" if caption_extension != ".txt" else ".caption"
        if any(caption_path(p, other).exists() for p in images.values()):
            # The classic silent mistake: tags in .txt while training reads .caption.
            print(f"warning: no {caption_extension} files but {other} files exist; set caption_extension = \"{other}\" to use them")
    return images, captions
