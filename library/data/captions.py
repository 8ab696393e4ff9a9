"""Caption and tag files beside the images: `<stem>.caption` (BLIP) and `<stem>.txt` (WD14).

Files are UTF-8 (a BOM is tolerated) and only their first line is used, as kohya's trainer does
(with enable_wildcard every non-empty line is kept and one is chosen per step);
writes are atomic so an interrupted edit never truncates a caption.
"""
from __future__ import annotations

import os
from pathlib import Path

from library.errors import UserError
from library.file_io import write_text_atomic

DEFAULT_CAPTION_EXTENSION = ".caption"
DEFAULT_TAG_EXTENSION = ".txt"


def normalize_extension(extension: str) -> str:
    """".txt" or "txt" -> ".txt"."""
    extension = extension.strip()
    if not extension:
        raise UserError("caption extension is empty; use e.g. --caption_extension .caption")
    if "/" in extension or "\\" in extension:
        raise UserError(f"caption extension {extension!r} contains a folder separator; it is only the file ending, "
                        "e.g. .caption or .txt")
    return extension if extension.startswith(".") else "." + extension


def caption_path(image_path: str | os.PathLike, extension: str) -> Path:
    """The caption file of an image: same folder, same stem, `extension`."""
    image_path = Path(image_path)
    return image_path.with_name(image_path.stem + normalize_extension(extension))


def read_text_file(path: str | os.PathLike) -> str | None:
    """Whole content of a UTF-8 text file, or None when it does not exist."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text; re-save it as UTF-8") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder, expected a caption file") from None


def first_line(text: str) -> str:
    """The first line, stripped ("" for an empty file)."""
    lines = text.splitlines()
    return lines[0].strip() if lines else ""


def read_caption(path: str | os.PathLike) -> str | None:
    """The caption in `path` (its first line, stripped), or None if there is no such file."""
    text = read_text_file(path)
    return None if text is None else first_line(text)


def read_caption_lines(path: str | os.PathLike) -> str | None:
    """Every non-empty line of `path`, stripped and joined by newlines (kohya's enable_wildcard
    reading: one line is chosen per step), or None if there is no such file."""
    text = read_text_file(path)
    return None if text is None else "\n".join(line.strip() for line in text.splitlines() if line.strip())


def has_extra_lines(text: str) -> bool:
    """True when lines after the first carry text; kohya (and we) ignore them, worth a warning."""
    return any(line.strip() for line in text.splitlines()[1:])


def write_caption(path: str | os.PathLike, text: str) -> None:
    """Write one caption line (newline-terminated), atomically."""
    write_text_atomic(path, text.strip() + "\n")
