"""A small synthetic image set of one recognisable concept, for the demo and the tests.

"catwomen" here is a yellow disc crossed by a black bar (a mask) on a blue night sky; sizes vary
so that aspect-ratio buckets are exercised. Each image gets WD14-style tags (`.txt`) and a
BLIP-style sentence (`.caption`), as the tagging and captioning steps would write them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SIZES = [(64, 64), (64, 96), (96, 64), (80, 80), (64, 64), (72, 96)]
_TAGS = ["1girl, black bodysuit, mask, night, rooftop", "1girl, black bodysuit, mask, cat ears, city",
         "solo, black bodysuit, mask, moon", "1girl, mask, whip, night"]


def draw_concept(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    image = Image.new("RGB", (width, height), (30, 60, 160 + int(rng.integers(0, 60))))
    draw = ImageDraw.Draw(image)
    r = min(width, height) // 3
    cx, cy = width // 2 + int(rng.integers(-4, 5)), height // 2 + int(rng.integers(-4, 5))
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(240, 220, 40))
    draw.rectangle([cx - r, cy - 3, cx + r, cy + 3], fill=(0, 0, 0))
    return image


def make_concept_images(folder: Path, count: int = 4, caption_extension: str | None = ".caption",
                        caption: str = "catwomen, 1girl, black suit", sizes=SIZES, tags: bool = False) -> list[Path]:
    """Write `count` PNGs (and a caption file each, plus WD14-style .txt tags when `tags`)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        width, height = sizes[index % len(sizes)]
        path = folder / f"img{index}.png"
        draw_concept(width, height, rng).save(path)
        if caption_extension:
            path.with_suffix(caption_extension).write_text(caption, encoding="utf-8")
        if tags:
            path.with_suffix(".txt").write_text(_TAGS[index % len(_TAGS)], encoding="utf-8")
        paths.append(path)
    return paths
