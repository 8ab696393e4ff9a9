"""Fine-tuning metadata files (meta_clean.json, meta_lat.json): `{image key: {caption, tags, ...}}`.

The key is the image stem, or the image path with `--full_path` (kohya's convention). The
trainer finds the image, its caption and its latent cache from these entries.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from library.errors import UserError
from library.file_io import write_json_atomic


def load_metadata(path: str | os.PathLike) -> dict[str, dict]:
    """Read a metadata JSON; a missing, malformed or wrongly shaped file is a UserError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"{path}: metadata file not found; create it with finetune/merge_all_to_metadata.py") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"{path}: not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise UserError(f"{path}: expected an object of {{image key: {{\"caption\": ..., \"tags\": ...}}}} entries")
    return data


def load_metadata_if_exists(path: str | os.PathLike | None) -> dict[str, dict]:
    if path is None or not Path(path).exists():
        return {}
    return load_metadata(path)


def save_metadata(path: str | os.PathLike, metadata: dict[str, dict]) -> None:
    """Write atomically: an interrupted run leaves the previous file intact."""
    write_json_atomic(path, metadata)


def image_key(image_path: str | os.PathLike, full_path: bool) -> str:
    """kohya's key: the path as found (with `full_path`) or the file stem."""
    return str(image_path) if full_path else Path(image_path).stem


def keys_for_images(image_paths: Iterable[Path], full_path: bool) -> dict[str, Path]:
    """{key: image path}; two images sharing a key is a UserError (their entries would merge)."""
    keys: dict[str, Path] = {}
    for path in image_paths:
        key = image_key(path, full_path)
        if key in keys:
            raise UserError(
                f"{path} and {keys[key]} share the metadata key {key!r}; rename one, or use --full_path"
            )
        keys[key] = path
    return keys

