"""Collect caption/tag files into a metadata dict (the merge_*_to_metadata scripts)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from library.data.captions import caption_path, first_line, has_extra_lines, read_text_file


@dataclass
class MergeReport:
    merged: int = 0
    missing: list[Path] = field(default_factory=list)  # images without the text file
    multi_line: list[Path] = field(default_factory=list)  # text files whose later lines are ignored


def merge_text_files(
    metadata: dict[str, dict], images: dict[str, Path], field_name: str, extension: str, report: MergeReport | None = None
) -> MergeReport:
    """Set metadata[key][field_name] from each image's `<stem><extension>` file (first line).

    Images without the file are listed in the report and keep whatever entry they had, so a
    missing caption never wipes one merged earlier.
    """
    report = report or MergeReport()
    for key, image_path in images.items():
        text_path = caption_path(image_path, extension)
        text = read_text_file(text_path)
        entry = metadata.setdefault(key, {})
        if text is None:
            report.missing.append(text_path)
            continue
        if has_extra_lines(text):
            report.multi_line.append(text_path)
        entry[field_name] = first_line(text)
        report.merged += 1
    return report
