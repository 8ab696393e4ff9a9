"""kohya's `cache_info`: the captions and sizes of a DreamBooth folder, kept in
<folder>/metadata_cache.json so a large dataset starts without opening every file.

The file is kohya's: {"<image path>": {"caption": "...", "resolution": [w, h]}} (the caption as
trained, class tokens filled in for images without a caption file), so either tool reads the
other's. kohya trusts it blindly; here it is used only while it is fresh: it lists exactly the
folder's images and is newer than every image and caption file (a few stat calls), otherwise it is
rebuilt.
"""
from __future__ import annotations

import json
from pathlib import Path

from library.data.captions import caption_path
from library.file_io import write_json_atomic

CACHE_NAME = "metadata_cache.json"


def load_image_info(folder: Path, images: list[Path], caption_extension: str) -> dict[str, tuple] | None:
    """{image file name: ((width, height), caption)} from a fresh cache file, else None."""
    path = Path(folder) / CACHE_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        entries = {Path(key).name: (tuple(value["resolution"]), value["caption"]) for key, value in data.items()}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if set(entries) != {image.name for image in images}:
        return None
    written = path.stat().st_mtime
    for image in images:
        caption = caption_path(image, caption_extension)
        if image.stat().st_mtime > written or (caption.exists() and caption.stat().st_mtime > written):
            return None
    return entries


def save_image_info(folder: Path, records: dict[Path, tuple]) -> None:
    """records: {image path: ((width, height), caption as trained)}."""
    data = {str(image): {"caption": caption, "resolution": list(size)} for image, (size, caption) in records.items()}
    write_json_atomic(Path(folder) / CACHE_NAME, data)
