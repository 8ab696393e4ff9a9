"""Comma-separated tag lists: splitting, joining, underscore rules, editing and frequency counts."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

# The reference WD14 tagger keeps underscores in these tags: they are faces, not words.
KAOMOJI = frozenset(
    "0_0 (o)_(o) +_+ +_- ._. <o>_<o> <|>_<|> =_= >_< 3_3 6_9 >_o @_@ ^_^ o_o u_u x_x |_| ||_||".split()
)


def split_tags(text: str, separator: str = ",") -> list[str]:
    """"a, b,,c " -> ["a", "b", "c"]."""
    separator = separator.strip() or ","
    return [tag.strip() for tag in text.split(separator) if tag.strip()]


def join_tags(tags: Iterable[str], separator: str = ", ") -> str:
    return separator.join(tags)


def underscore_to_space(tag: str) -> str:
    """"long_hair" -> "long hair", but kaomoji such as "^_^" keep their underscore."""
    return tag if tag in KAOMOJI else tag.replace("_", " ")


def tag_key(tag: str) -> str:
    """What two spellings of a tag share: "long_hair" and "long hair" are the same tag."""
    return underscore_to_space(tag.strip())


def parse_tag_list(text: str | None) -> list[str]:
    """A comma-separated option value -> tags (empty for None or "")."""
    return split_tags(text or "")


def parse_replacements(pairs: Iterable[str]) -> dict[str, str]:
    """["old=new", ...] -> {"old": "new"}; "old=" deletes the tag."""
    result = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"replacement {pair!r} is not OLD=NEW")
        old, new = pair.split("=", 1)
        if not old.strip():
            raise ValueError(f"replacement {pair!r} has an empty OLD tag")
        result[tag_key(old)] = new.strip()
    return result


@dataclass
class TagEdit:
    """An edit applied to every tag list: replace, remove, deduplicate, then add.

    `add` tags go first, in the order given (a trigger word is usually first, since earlier tags
    weigh more), or last with `append`; a tag already present is moved rather than duplicated.
    Matching ignores the underscore/space difference.
    """

    add: list[str] = field(default_factory=list)
    append: bool = False
    remove: set[str] = field(default_factory=set)
    replace: dict[str, str] = field(default_factory=dict)
    dedupe: bool = False

    def __post_init__(self):
        self.remove = {tag_key(t) for t in self.remove}

    def apply(self, tags: list[str]) -> list[str]:
        result = []
        for tag in tags:
            key = tag_key(tag)
            if key in self.replace:
                tag = self.replace[key]
                if not tag:
                    continue
            if tag_key(tag) in self.remove:
                continue
            result.append(tag)
        if self.dedupe:
            seen, unique = set(), []
            for tag in result:
                if tag_key(tag) not in seen:
                    seen.add(tag_key(tag))
                    unique.append(tag)
            result = unique
        if self.add:
            added = {tag_key(t) for t in self.add}
            result = [t for t in result if tag_key(t) not in added]
            result = result + list(self.add) if self.append else list(self.add) + result
        return result


def tag_frequency(tag_lists: Iterable[list[str]]) -> Counter:
    """How many lists contain each tag (counted once per list)."""
    counts: Counter = Counter()
    for tags in tag_lists:
        counts.update({tag_key(t) for t in tags})
    return counts


def format_frequency(counts: Counter, limit: int | None = None) -> list[str]:
    """Report lines "count  tag", most frequent first, ties alphabetical."""
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    if limit:
        ordered = ordered[:limit]
    width = len(str(ordered[0][1])) if ordered else 1
    return [f"{count:>{width}}  {tag}" for tag, count in ordered]
