"""Write the demo's synthetic image set: one concept, varied sizes, BLIP-style .caption and
WD14-style .txt tags per image (what the captioning and tagging steps would produce)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from library.errors import run_cli  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output_dir", required=True, help="folder for the images")
    parser.add_argument("--count", type=int, default=8, help="number of images")
    args = parser.parse_args(argv)
    from library.data.demo_images import make_concept_images

    paths = make_concept_images(Path(args.output_dir), args.count, caption="a woman in a black suit and a mask at night",
                                tags=True)
    print(f"wrote {len(paths)} images with .caption and .txt files to {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
