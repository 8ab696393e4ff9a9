"""Apply a TagEdit to the caption/tag files of a folder, safely (edit_tags.py's engine)."""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

from library.data.captions import caption_path, read_text_file
from library.data.tags import TagEdit, join_tags, split_tags
from library.file_io import write_text_atomic


@dataclass
class TagFileReport:
    changed: list[Path] = field(default_factory=list)
    created: list[Path] = field(default_factory=list)
    unchanged: int = 0
    no_file: list[Path] = field(default_factory=list)  # images without a caption file (not created)
    diffs: list[str] = field(default_factory=list)
    tag_lists: list[list[str]] = field(default_factory=list)  # tags after the edit, for frequencies


def edit_text(text: str, edit: TagEdit, separator: str) -> str:
    """Edit the first line's tags; any further lines are kept as they are (never lose text)."""
    lines = text.splitlines()
    head = lines[0] if lines else ""
    new_head = join_tags(edit.apply(split_tags(head, separator)), separator)
    return "\n".join([new_head] + lines[1:]) + "\n"


def edit_tag_files(
    images: list[Path], extension: str, edit: TagEdit, separator: str = ", ", create_missing: bool = False, dry_run: bool = False
) -> TagFileReport:
    report = TagFileReport()
    for image in images:
        path = caption_path(image, extension)
        old = read_text_file(path)
        if old is None and not create_missing:
            report.no_file.append(image)
            continue
        new = edit_text(old or "", edit, separator)
        report.tag_lists.append(split_tags(new.splitlines()[0], separator))
        if old is not None and new == old:
            report.unchanged += 1
            continue
        (report.created if old is None else report.changed).append(path)
        if dry_run:
            report.diffs.append(
                "".join(
                    difflib.unified_diff(
                        (old or "").splitlines(keepends=True), new.splitlines(keepends=True),
                        fromfile=str(path) if old is not None else "/dev/null", tofile=str(path),
                    )
                )
            )
        else:
            write_text_atomic(path, new)
    return report
