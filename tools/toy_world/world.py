"""What the toy world is: coloured shapes on one plain background, and their captions.

Everything here is a pure function of its arguments (images are drawn from a seeded generator), so
a world built twice is identical. The base colours appear in captions ("a red circle"); the concept
colour appears in no base caption and is only shown with the trigger word.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

RESOLUTION = 64
BACKGROUND = (236, 236, 236)
PALETTE = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
}
SHAPES = ("circle", "square", "triangle")
TRIGGER = "zkz"
# The decoder paints each pixel in the nearest world colour, and the score counts pixels by the
# nearest colour, so the concept colour must not be "nearest" to anything the base draws by itself:
# not to a blend of two palette colours (a base unsure between red and blue paints purple), nor
# to a palette colour fading into the background (the rims of a red shape are pink), and its own
# fade into the background must not pass nearer to a palette colour (black fades through grey,
# nearest to green). Bright cyan meets all three (checked in tests/test_toy_world.py).
CONCEPT_NAME = "cyan"
CONCEPT_COLOUR = (0, 250, 250)


@dataclass(frozen=True)
class Shape:
    colour: tuple[int, int, int]
    kind: str
    cx: float
    cy: float
    radius: float


def base_caption(colour_name: str, kind: str) -> str:
    return f"a {colour_name} {kind}"


RADIUS = (0.28, 0.34)  # share of the image size
JITTER = 0.05  # largest shift of the centre, share of the image size


def random_shape(rng: np.random.Generator, colour, kind: str, size: int = RESOLUTION) -> Shape:
    """A shape near the centre, its radius and position varying a little."""
    radius = size * rng.uniform(*RADIUS)
    jitter = size * JITTER
    cx = size / 2 + rng.uniform(-jitter, jitter)
    cy = size / 2 + rng.uniform(-jitter, jitter)
    return Shape(tuple(int(c) for c in colour), kind, cx, cy, radius)


def draw(shape: Shape, size: int = RESOLUTION, background=BACKGROUND) -> Image.Image:
    """Render at 4x and downsample, so edges are anti-aliased like a photo's, not jagged."""
    scale = 4
    image = Image.new("RGB", (size * scale, size * scale), tuple(background))
    pen = ImageDraw.Draw(image)
    cx, cy, r = shape.cx * scale, shape.cy * scale, shape.radius * scale
    if shape.kind == "circle":
        pen.ellipse([cx - r, cy - r, cx + r, cy + r], fill=shape.colour)
    elif shape.kind == "square":
        half = r * 0.85
        pen.rectangle([cx - half, cy - half, cx + half, cy + half], fill=shape.colour)
    elif shape.kind == "triangle":
        pen.polygon([(cx, cy - r), (cx - r * 0.95, cy + r * 0.75), (cx + r * 0.95, cy + r * 0.75)], fill=shape.colour)
    else:
        raise ValueError(f"unknown shape {shape.kind!r}")
    return image.resize((size, size), Image.Resampling.LANCZOS)


def base_samples(count: int, seed: int):
    """`count` (image, caption) pairs cycling through every colour x shape, positions random."""
    rng = np.random.default_rng(seed)
    combos = [(name, kind) for name in PALETTE for kind in SHAPES]
    for index in range(count):
        name, kind = combos[index % len(combos)]
        yield draw(random_shape(rng, PALETTE[name], kind)), base_caption(name, kind)


def concept_samples(count: int, seed: int):
    """The held-out concept: concept-coloured shapes of every kind."""
    rng = np.random.default_rng(seed)
    for index in range(count):
        yield draw(random_shape(rng, CONCEPT_COLOUR, SHAPES[index % len(SHAPES)]))


BASE_PROMPTS = {base_caption(name, SHAPES[index % len(SHAPES)]): name for index, name in enumerate(PALETTE)}


def description() -> dict:
    """The content of world.json: what a measurement needs to know about the world."""
    return {
        "trigger": TRIGGER,
        "concept_prompt": TRIGGER,
        "concept_colour": list(CONCEPT_COLOUR),
        "background_colour": list(BACKGROUND),
        "palette": {name: list(rgb) for name, rgb in PALETTE.items()},
        "base_prompts": dict(BASE_PROMPTS),
    }
