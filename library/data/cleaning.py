"""kohya's cleaning rules for merged metadata: tidy WD14/DeepDanbooru tags and BLIP captions.

Tags: underscores become spaces (except "^_^"), a DeepDanbooru "rating:..." tail is cut off, in
pictures of several people (a tag containing "girls" or "boys") colour/length/hairstyle tags that
occur more than once are dropped (they cannot be attributed to one person; one hair-length tag is
kept when all share it), and a one-word tag is dropped when a longer tag ends with it
("shirt" beside "white shirt").
Captions: BLIP's phrasings for a person in a drawing ("anime woman", "cartoon character",
"lady" ...) become "girl"/"girls", repeatedly, in a fixed order.
"""
from __future__ import annotations

import re

# Tags are searched as ", tag, " inside a string padded so every tag has commas on both sides.
_HAIR_LENGTH = re.compile(r", (long|short|medium) hair, ")
_HAIR_CUT = re.compile(r", (bob|hime) cut, ")
_HAIR_COLOUR = re.compile(r", ([\w\-]+) hair, ")
_SINGLE_WORD = re.compile(r", ([\w\-]+|hair ornament), ")
_MULTI_PERSON_AMBIGUOUS = (
    _HAIR_LENGTH,
    _HAIR_CUT,
    re.compile(r", [\w\-]+ eyes, "),
    re.compile(r", ([\w\-]+ sleeves|sleeveless), "),
    re.compile(
        r", (ponytail|braid|ahoge|twintails|[\w\-]+ bun|single hair bun|single side bun|two side up|two tails|"
        r"[\w\-]+ braid|sidelocks), "
    ),
)
_PLACEHOLDER = ", @@@, "

# Applied top to bottom, each until the caption stops changing.
CAPTION_REPLACEMENTS = (
    ("anime anime", "anime"),
    ("young ", ""),
    ("anime girl", "girl"),
    ("cartoon female", "girl"),
    ("cartoon lady", "girl"),
    ("cartoon character", "girl"),
    ("cartoon woman", "girl"),
    ("cartoon women", "girls"),
    ("cartoon girl", "girl"),
    ("anime female", "girl"),
    ("anime lady", "girl"),
    ("anime character", "girl"),
    ("anime woman", "girl"),
    ("anime women", "girls"),
    ("lady", "girl"),
    ("female", "girl"),
    ("woman", "girl"),
    ("women", "girls"),
    ("people", "girls"),
    ("person", "girl"),
    ("a cartoon figure", "a figure"),
    ("a cartoon image", "an image"),
    ("a cartoon picture", "a picture"),
    ("an anime cartoon image", "an image"),
    ("a cartoon anime drawing", "a drawing"),
    ("a cartoon drawing", "a drawing"),
    ("girl girl", "girl"),
)


def _drop_ambiguous_multi_person_tags(padded: str) -> str:
    for pattern in _MULTI_PERSON_AMBIGUOUS:
        if len(pattern.findall(padded)) > 1:
            padded = pattern.sub("", padded)
    # A hair-length tag survives the hair-colour rule below ("long hair" also matches "<x> hair").
    length = _HAIR_LENGTH.search(padded)
    if length:
        padded = _HAIR_LENGTH.sub(_PLACEHOLDER, padded)
    if len(_HAIR_COLOUR.findall(padded)) > 1:
        padded = _HAIR_COLOUR.sub("", padded)
    if length:
        padded = padded.replace(_PLACEHOLDER, length.group())
    return padded


def clean_tags(tags: str) -> tuple[str, list[str]]:
    """Cleaned tag string, and notes worth printing (e.g. several rating tails)."""
    notes = []
    tags = tags.replace("^_^", "\0").replace("_", " ").replace("\0", "^_^")
    pieces = tags.split(", rating")
    if len(pieces) > 2:
        notes.append("several rating tags")
    tags = pieces[0]
    # Double every separator so adjacent tags each keep their own commas while matching.
    padded = ", " + tags.replace(", ", ", , ") + ", "
    if "girls" in padded or "boys" in padded:
        padded = _drop_ambiguous_multi_person_tags(padded)
    for word in _SINGLE_WORD.findall(padded):
        if re.search(rf", ((\w+) )+{re.escape(word)}, ", padded):
            padded = padded.replace(f", {word}, ", "")
    padded = padded.replace(", , ", ", ")
    return padded[2:-2], notes


def clean_caption(caption: str) -> str:
    for old, new in CAPTION_REPLACEMENTS:
        while old in caption:
            caption = caption.replace(old, new)
    return caption
