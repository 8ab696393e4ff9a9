"""A1111-style LoRA tags in prompts: `<lora:name>`, `<lora:name:0.7>`, `<lora:name:0.7:lbw=XL_face>`.

The tags are removed from the prompt text; each becomes a LoraTag. A1111's separate text-encoder
and UNet weights (`<lora:name:te:unet>`) are not supported and are reported as such.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from library.errors import UserError

_TAG = re.compile(r"<lora:([^>]*)>")


@dataclass(frozen=True)
class LoraTag:
    name: str
    weight: float = 1.0
    lbw: str | None = None


def parse_tag(body: str) -> LoraTag:
    parts = [p.strip() for p in body.split(":")]
    name, rest = parts[0], parts[1:]
    if not name:
        raise UserError(f"<lora:{body}>: the tag has no LoRA name")
    numbers, lbw = [], None
    for item in rest:
        if item.startswith("lbw="):
            lbw = item[4:]
            continue
        try:
            numbers.append(float(item))
        except ValueError:
            raise UserError(f"<lora:{body}>: '{item}' is neither a weight nor lbw=...") from None
    if len(numbers) > 1:
        raise UserError(f"<lora:{body}>: separate text-encoder/UNet weights are not supported; give one weight")
    weight = numbers[0] if numbers else 1.0
    return LoraTag(name, weight, lbw)


def split_prompt(prompt: str) -> tuple[str, list[LoraTag]]:
    """(prompt without LoRA tags, the tags in order)."""
    tags = [parse_tag(m.group(1)) for m in _TAG.finditer(prompt)]
    text = re.sub(r"\s{2,}", " ", _TAG.sub("", prompt)).strip().strip(",").strip()
    return text, tags
