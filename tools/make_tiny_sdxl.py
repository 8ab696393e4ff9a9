"""Write the tiny SDXL-architecture test model (diffusers folder + single-file checkpoint)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from library.entry import run_cli  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output_dir", required=True, help="folder to write diffusers/ and sdxl_tiny.safetensors into")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (same seed, same files)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from library.models.tiny_sdxl import write_tiny_sdxl

    paths = write_tiny_sdxl(args.output_dir, args.seed)
    print(f"diffusers folder: {paths['diffusers']}")
    print(f"single file:      {paths['single_file']}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
