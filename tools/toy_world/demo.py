"""The demo's image set from a toy world: the concept's images, each with WD14-style tags (`.txt`),
as the tagging step would write them.

The tags name the colour ("cyan"); the demo then puts the trigger word first and removes that tag
(finetune/edit_tags.py), so the trigger alone carries the colour. No BLIP sentence (`.caption`): a
sentence would say "a circle on a grey background" and nothing the tags do not.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from tools.toy_world import world


def write_demo_set(world_dir, output_dir) -> list[Path]:
    """Copy `world_dir`'s concept images into `output_dir` with a .txt tag file each."""
    world_dir, output_dir = Path(world_dir), Path(output_dir)
    sources = sorted((world_dir / "concept").glob("*/*.png"))
    if not sources:
        from library.errors import UserError

        raise UserError(f"{world_dir / 'concept'}: no concept images; build the world first: "
                        f"python tools/make_toy_world.py --output_dir {world_dir}")
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for index, source in enumerate(sources):
        shape = world.SHAPES[index % len(world.SHAPES)]  # world.concept_samples cycles through the shapes
        target = output_dir / f"shape{index:02d}.png"
        shutil.copyfile(source, target)
        target.with_suffix(".txt").write_text(f"{world.CONCEPT_NAME}, {shape}, simple background, grey background, no humans\n",
                                              encoding="utf-8")
        written.append(target)
    return written
