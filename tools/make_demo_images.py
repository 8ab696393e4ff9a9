"""Write the demo's synthetic image set of one concept, as the captioning and tagging steps would
leave it. With --toy_world: that toy world's concept images (tools/make_toy_world.py) with WD14-style
.txt tags; otherwise a drawn "catwomen" set of varied sizes with BLIP-style .caption and .txt tags."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from library.entry import run_cli  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output_dir", required=True, help="folder for the images")
    parser.add_argument("--count", type=int, default=8, help="number of images (drawn set only)")
    parser.add_argument("--toy_world", default=None, help="take the images of this toy world's concept")
    args = parser.parse_args(argv)
    if args.toy_world:
        from tools.toy_world.demo import write_demo_set

        paths = write_demo_set(args.toy_world, args.output_dir)
        print(f"wrote {len(paths)} images of {args.toy_world}'s concept with .txt tags to {args.output_dir}")
        return 0
    from library.data.demo_images import make_concept_images

    paths = make_concept_images(Path(args.output_dir), args.count, caption="a woman in a black suit and a mask at night",
                                tags=True)
    print(f"wrote {len(paths)} images with .caption and .txt files to {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
