"""Scoring a generated toy-world image by the colour of its foreground.

Foreground pixels are those far from the background colour; each is assigned the nearest named
colour (the base palette plus the concept colour), and the image's colour is the most frequent
assignment. An image with almost no foreground scores as "none". Per-pixel votes, not the mean
colour, so a half-red half-blue image never passes for purple.
"""
from __future__ import annotations

import numpy as np

FOREGROUND_DISTANCE = 90.0  # RGB Euclidean distance from the background
MIN_FOREGROUND = 0.03  # share of the image's pixels


def colour_table(world: dict) -> dict[str, tuple[int, int, int]]:
    """Every colour an image can be scored as: the palette and the concept (named by the trigger)."""
    return {**{name: tuple(rgb) for name, rgb in world["palette"].items()}, world["trigger"]: tuple(world["concept_colour"])}


def score_image(pixels, world: dict) -> dict:
    """{"colour": name or "none", "foreground": share of pixels, "votes": {name: share of foreground}}."""
    array = np.asarray(pixels, dtype=np.float32)[..., :3]
    background = np.asarray(world["background_colour"], dtype=np.float32)
    foreground = np.linalg.norm(array - background, axis=-1) > FOREGROUND_DISTANCE
    share = float(foreground.mean())
    if share < MIN_FOREGROUND:
        return {"colour": "none", "foreground": share, "votes": {}}
    names = list(colour_table(world))
    table = np.asarray([colour_table(world)[n] for n in names], dtype=np.float32)
    distances = np.linalg.norm(array[foreground][:, None, :] - table[None], axis=-1)
    counts = np.bincount(distances.argmin(axis=1), minlength=len(names))
    votes = {name: float(count) / int(foreground.sum()) for name, count in zip(names, counts)}
    return {"colour": names[int(counts.argmax())], "foreground": share, "votes": votes}


def rate(scores: list[dict], colour: str) -> float:
    """Share of images scored as `colour`."""
    return sum(s["colour"] == colour for s in scores) / len(scores) if scores else 0.0
