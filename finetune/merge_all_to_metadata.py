"""Merge captions (.caption) and tags (.txt) of a folder into one metadata JSON (meta_clean.json)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from library.data.merge_cli import add_common_arguments, run_merge  # noqa: E402
from library.entry import run_cli  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    add_common_arguments(parser)
    parser.add_argument("--caption_extension", default=".caption", help="extension of caption files (default .caption)")
    parser.add_argument("--tag_extension", default=".txt", help="extension of tag files (default .txt)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_merge(args, [("caption", args.caption_extension), ("tags", args.tag_extension)])


if __name__ == "__main__":
    sys.exit(run_cli(main))
