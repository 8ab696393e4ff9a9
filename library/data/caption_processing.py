"""Per-step caption augmentation, with kohya's semantics (train_util.BaseDataset.process_caption).

Order: one line of a multi-line caption (enable_wildcard; else the whole text, as kohya: caption
files give their first line only, metadata captions may hold several) -> prefix/suffix ->
caption dropout (whole caption) -> wildcard expansion ({a|b}, `{{`/`}}` for literal braces; after the
prefix/suffix, so they may hold wildcards too) -> only when shuffle_caption, token warm-up or tag
dropout is on: split into tags at caption_separator, fixed tags (keep_tokens, or the part before
keep_tokens_separator plus a fixed tail after a second one), warm-up, shuffle, tag dropout, re-join
with ", " -> secondary_separator replaced by caption_separator. Without those three options the
text is left as written (keep_tokens_separator included). All randomness comes from the
`random.Random` passed in (one per sample and step), so a seeded run is reproducible.
Intentional differences from kohya are listed in docs/kohya_differences.md.
"""
from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

_WILDCARD = re.compile(r"\{([^}]+)\}")  # kohya's pattern


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


def choose_line(caption: str, rng: random.Random) -> str:
    """A random non-empty line of a multi-line (wildcard) caption."""
    lines = [line for line in caption.split("\n") if line.strip()] or [""]
    return lines[0] if len(lines) == 1 else rng.choice(lines)


def expand_wildcards(caption: str, rng: random.Random) -> str:
    """`{a|b|c}` -> one of a, b, c; `{{` and `}}` stay as literal braces."""
    open_mark, close_mark = "\u2985", "\u2986"
    while open_mark in caption or close_mark in caption:  # placeholders that cannot clash with the text
        open_mark, close_mark = open_mark + "\u2985", close_mark + "\u2986"
    caption = caption.replace("{{", open_mark).replace("}}", close_mark)
    caption = _WILDCARD.sub(lambda m: rng.choice(m.group(1).split("|")), caption)
    return caption.replace(open_mark, "{").replace(close_mark, "}")


def splits_tags(options: CaptionOptions) -> bool:
    """kohya splits and re-joins a caption only for these three options."""
    return bool(options.shuffle_caption or options.token_warmup_step > 0 or options.caption_tag_dropout_rate > 0)


def process_caption(caption: str, options: CaptionOptions, rng: random.Random, epoch: int = 0,
                    step: int = 0, max_steps: int = 1) -> str:
    if options.enable_wildcard:  # a line per step; without wildcards kohya keeps a multi-line caption whole
        caption = choose_line(caption, rng)
    if options.caption_prefix:
        caption = f"{options.caption_prefix} {caption}"
    if options.caption_suffix:
        caption = f"{caption} {options.caption_suffix}"

    if options.caption_dropout_every_n_epochs > 0 and epoch > 0 and epoch % options.caption_dropout_every_n_epochs == 0:
        return ""
    if options.caption_dropout_rate > 0 and rng.random() < options.caption_dropout_rate:
        return ""
    if options.enable_wildcard:
        caption = expand_wildcards(caption, rng)
    if splits_tags(options):
        caption = ", ".join(_shuffled_tags(caption, options, rng, step, max_steps))
    if options.secondary_separator:
        caption = caption.replace(options.secondary_separator, options.caption_separator)
    return caption


def _shuffled_tags(caption: str, options: CaptionOptions, rng: random.Random, step: int, max_steps: int) -> list[str]:
    separator, keep_separator = options.caption_separator, options.keep_tokens_separator
    if keep_separator and keep_separator in caption:
        fixed_part, flex_part = caption.split(keep_separator, 1)
        tail_part = ""
        if keep_separator in flex_part:
            flex_part, tail_part = flex_part.split(keep_separator, 1)
        fixed, flex, tail = _split(fixed_part, separator), _split(flex_part, separator), _split(tail_part, separator)
    else:
        tags = _split(caption, separator)
        fixed, flex, tail = tags[: options.keep_tokens], tags[options.keep_tokens :], []

    warmup_steps = options.token_warmup_step
    if warmup_steps and warmup_steps < 1:  # a fraction of the run
        warmup_steps = math.floor(warmup_steps * max_steps)
    if warmup_steps and step < warmup_steps:
        count = math.floor(step * (len(flex) - options.token_warmup_min) / warmup_steps) + options.token_warmup_min
        flex = flex[: max(count, 0)]
    if options.shuffle_caption:
        rng.shuffle(flex)
    if options.caption_tag_dropout_rate > 0:
        flex = [tag for tag in flex if rng.random() >= options.caption_tag_dropout_rate]
    return fixed + flex + tail


def _split(text: str, separator: str) -> list[str]:
    # Empty tags are dropped (kohya keeps them and can write "a, , b"): docs/kohya_differences.md
    return [tag.strip() for tag in text.split(separator) if tag.strip()]


def caption_notices(items) -> list[str]:
    """Notices for captions where this toolkit deliberately differs from kohya (docs/kohya_differences.md)."""
    empty = wildcard = 0
    for item in items:
        options, caption = item.subset, item.caption
        if splits_tags(options) and not (options.keep_tokens_separator and options.keep_tokens_separator in caption):
            empty += any(not tag.strip() for tag in caption.strip().split(options.caption_separator))
        if options.enable_wildcard and (options.caption_prefix or options.caption_suffix) and "\n" in caption.strip():
            wildcard += 1
    notices = []
    if empty:
        notices.append(f"{empty} caption(s) contain empty tags (a doubled or trailing separator): they are dropped when tags "
                       "are split; kohya keeps them and can train on \"a, , b\" (docs/kohya_differences.md)")
    if wildcard:
        notices.append(f"{wildcard} multi-line wildcard caption(s) with caption_prefix/caption_suffix: every chosen line gets "
                       "them; kohya puts the prefix on the first line and the suffix on the last only (docs/kohya_differences.md)")
    return notices
