"""Merge tag files (default .txt, from the WD14 tagger) of a folder into a metadata JSON."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from library.data.merge_cli import add_common_arguments, run_merge  # noqa: E402
from library.data.script_support import caption_extension_option, resolve_caption_extension  # noqa: E402
from library.entry import run_cli  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    add_common_arguments(parser)
    caption_extension_option(parser, ".txt")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_merge(args, [("tags", resolve_caption_extension(args))])


if __name__ == "__main__":
    sys.exit(run_cli(main))
