"""WD14 tagger labels (`selected_tags.csv`) and the choice of tags from one probability vector.

SmilingWolf's v2/v3 taggers output one probability per CSV row: category 9 rows are ratings (one
is chosen by argmax), 0 are general tags and 4 character tags (kept at or above their threshold).
The order and options follow kohya's tag_images_by_wd14_tagger.py; see docs/dataset_preparation.md
for where we differ.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from library.data.tags import tag_key, underscore_to_space
from library.errors import UserError

RATING, GENERAL, CHARACTER = 9, 0, 4


@dataclass
class TagLabels:
    names: list[str]  # raw names, one per model output
    categories: list[int]

    def indexes(self, category: int) -> np.ndarray:
        return np.array([i for i, c in enumerate(self.categories) if c == category], dtype=np.int64)


def read_selected_tags(path: str | Path) -> TagLabels:
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except FileNotFoundError:
        raise UserError(f"{path}: selected_tags.csv not found next to model.onnx; copy it from the tagger's model folder") from None
    if not rows or [c.strip() for c in rows[0][:3]] != ["tag_id", "name", "category"]:
        raise UserError(f"{path}: unexpected header {rows[0] if rows else '(empty file)'}; expected tag_id,name,category,count")
    try:
        names = [row[1] for row in rows[1:] if row]
        categories = [int(row[2]) for row in rows[1:] if row]
    except (IndexError, ValueError):
        raise UserError(f"{path}: a row lacks a name or an integer category") from None
    return TagLabels(names, categories)


def parse_tag_replacement(text: str | None) -> dict[str, str]:
    """kohya's format "source,target;source2,target2", with "\\," and "\\;" for literal , and ;."""
    if not text:
        return {}
    escaped = text.replace("\\,", "\0c").replace("\\;", "\0s")
    result = {}
    for pair in escaped.split(";"):
        if not pair.strip():
            continue
        parts = pair.split(",")
        if len(parts) != 2 or not parts[0].strip():
            raise UserError(f"--tag_replacement {text!r}: write pairs as 'source,target;source2,target2'")
        source, target = (p.replace("\0c", ",").replace("\0s", ";").strip() for p in parts)
        result[tag_key(source)] = target
    return result


@dataclass
class TagOptions:
    general_threshold: float = 0.35
    character_threshold: float = 0.35
    remove_underscore: bool = False
    undesired_tags: set[str] = field(default_factory=set)
    tag_replacement: dict[str, str] = field(default_factory=dict)
    character_tags_first: bool = False
    always_first_tags: list[str] = field(default_factory=list)
    use_rating_tags: bool = False
    use_rating_tags_as_last_tag: bool = False
    character_tag_expand: bool = False
    caption_separator: str = ", "


def display_names(labels: TagLabels, options: TagOptions) -> list[str]:
    """The names written to files: character expansion, underscores, then replacements."""
    names = []
    for name, category in zip(labels.names, labels.categories):
        if options.character_tag_expand and category == CHARACTER and name.endswith(")") and "(" in name:
            # "name_(series)" -> "name, series"; "name_(costume)_(series)" -> "name_(costume), series"
            head, _, series = name.rpartition("(")
            name = head.rstrip("_") + options.caption_separator + series.rstrip(")")
        if options.remove_underscore:
            name = underscore_to_space(name)
        name = options.tag_replacement.get(tag_key(name), name)
        names.append(name)
    return names


@dataclass
class SelectedTags:
    tags: list[str]  # in output order
    rating: str | None
    general: list[str]
    character: list[str]


def select_tags(probs: np.ndarray, labels: TagLabels, names: list[str], options: TagOptions) -> SelectedTags:
    """The tags for one image from its probability vector (already sigmoid outputs)."""
    undesired = {tag_key(t) for t in options.undesired_tags}
    combined, general, character = [], [], []
    for index, category in enumerate(labels.categories):
        name = names[index]
        if category == GENERAL and probs[index] >= options.general_threshold and tag_key(name) not in undesired:
            general.append(name)
            combined.append(name)
        elif category == CHARACTER and probs[index] >= options.character_threshold and tag_key(name) not in undesired:
            character.append(name)
            if options.character_tags_first:
                combined.insert(0, name)  # as kohya: several character tags end up in reverse order
            else:
                combined.append(name)
    rating = None
    rating_rows = labels.indexes(RATING)
    if (options.use_rating_tags or options.use_rating_tags_as_last_tag) and len(rating_rows):
        candidate = names[int(rating_rows[int(np.argmax(probs[rating_rows]))])]
        if tag_key(candidate) not in undesired:
            rating = candidate
            if options.use_rating_tags:
                combined.insert(0, rating)
            else:
                combined.append(rating)
    # As kohya: each listed tag present is moved to the front in turn, so the last listed ends up first.
    for first in options.always_first_tags:
        match = next((t for t in combined if tag_key(t) == tag_key(first)), None)
        if match is not None:
            combined.remove(match)
            combined.insert(0, match)
    return SelectedTags(combined, rating, general, character)
