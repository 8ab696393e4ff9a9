"""Per-step caption augmentation, with kohya's semantics.

Order: wildcard choice ({a|b}, and a random line of multi-line captions) -> prefix/suffix ->
caption dropout (whole caption) -> split into tags -> fixed tags (keep_tokens or the part before
keep_tokens_separator, plus a fixed tail after a second separator) -> token warm-up -> tag dropout ->
shuffle -> join -> secondary_separator turned into caption_separator (so joined tags moved as one).
All randomness comes from the `random.Random` passed in, so a seeded run is reproducible.
"""
from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

_WILDCARD = re.compile(r"\{([^{}]+)\}")


@dataclass
class CaptionOptions:
    """Per-subset caption options (dataset_config.SubsetSpec extends this class)."""

    shuffle_caption: bool = False
    caption_separator: str = ","
    keep_tokens: int = 0
    keep_tokens_separator: str = ""
    secondary_separator: str | None = None
    enable_wildcard: bool = False
    caption_prefix: str | None = None
    caption_suffix: str | None = None
    caption_dropout_rate: float = 0.0
    caption_dropout_every_n_epochs: int = 0
    caption_tag_dropout_rate: float = 0.0
    token_warmup_min: int = 1
    token_warmup_step: float = 0


def choose_wildcards(caption: str, rng: random.Random) -> str:
    lines = [line for line in caption.splitlines() if line.strip()] or [""]
    caption = rng.choice(lines)
    return _WILDCARD.sub(lambda m: rng.choice(m.group(1).split("|")), caption)


def process_caption(caption: str, options: CaptionOptions, rng: random.Random, epoch: int = 0,
                    step: int = 0, max_steps: int = 1) -> str:
    if options.enable_wildcard:
        caption = choose_wildcards(caption, rng)
    else:
        caption = caption.splitlines()[0] if caption else ""
    if options.caption_prefix:
        caption = f"{options.caption_prefix} {caption}"
    if options.caption_suffix:
        caption = f"{caption} {options.caption_suffix}"

    if options.caption_dropout_every_n_epochs > 0 and epoch > 0 and epoch % options.caption_dropout_every_n_epochs == 0:
        return ""
    if options.caption_dropout_rate > 0 and rng.random() < options.caption_dropout_rate:
        return ""

    separator = options.caption_separator
    if options.keep_tokens_separator and options.keep_tokens_separator in caption:
        parts = caption.split(options.keep_tokens_separator)
        fixed = _split(parts[0], separator)
        flex = _split(parts[1], separator) if len(parts) > 1 else []
        tail = _split(parts[2], separator) if len(parts) > 2 else []
    else:
        tags = _split(caption, separator)
        fixed, flex, tail = tags[: options.keep_tokens], tags[options.keep_tokens :], []

    warmup_steps = options.token_warmup_step
    if warmup_steps and warmup_steps < 1:
        warmup_steps = math.floor(warmup_steps * max_steps)
    if warmup_steps and step < warmup_steps:
        count = math.floor(step * (len(flex) - options.token_warmup_min) / warmup_steps) + options.token_warmup_min
        flex = flex[: max(count, 0)]

    if options.caption_tag_dropout_rate > 0:
        flex = [tag for tag in flex if rng.random() >= options.caption_tag_dropout_rate]
    if options.shuffle_caption:
        rng.shuffle(flex)

    joiner = separator.strip() + " " if separator.strip() else separator
    caption = joiner.join(fixed + flex + tail)
    if options.secondary_separator:
        caption = caption.replace(options.secondary_separator, joiner)
    return caption


def _split(text: str, separator: str) -> list[str]:
    return [tag.strip() for tag in text.split(separator) if tag.strip()]
