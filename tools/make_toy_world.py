"""Build the toy world: a tiny SDXL-architecture model pretrained on coloured shapes, plus a held-out
concept to teach it with a LoRA (see tools/toy_world/ and docs/toy_world.md).

    python tools/make_toy_world.py --output_dir toy_world

Writes world.json, concept/10_zkz/ (12 images of the concept), toy_sdxl.safetensors (single-file
layout) and diffusers/ (diffusers layout). Deterministic for a given seed and thread count; a
second run reuses the finished model.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from library.entry import run_cli  # noqa: E402

from library.errors import UserError  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True, help="folder for the world (created; reused when already built)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the images and the model (default 0)")
    parser.add_argument("--unet_steps", type=int, default=None, help="UNet pretraining steps (default: the tested value)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: the tiny UNet is dispatch-bound, a second thread mostly waits)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    from tools.toy_world.build import BuildSettings, build_world

    if args.threads < 1:
        raise UserError(f"--threads {args.threads}: give 1 or more")
    if args.unet_steps is not None and args.unet_steps < 1:
        raise UserError(f"--unet_steps {args.unet_steps}: give 1 or more")
    settings = BuildSettings(seed=args.seed)
    if args.unet_steps is not None:
        settings = replace(settings, unet=replace(settings.unet, steps=args.unet_steps))
    previous = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        build_world(args.output_dir, settings)
    finally:
        torch.set_num_threads(previous)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
