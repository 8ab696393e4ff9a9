"""Clean the captions and tags of a metadata JSON with kohya's rules (optional step after merging)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from library.data.cleaning import clean_caption, clean_tags  # noqa: E402
from library.data.metadata import load_metadata, save_metadata  # noqa: E402
from library.data.script_support import print_summary, progress  # noqa: E402
from library.entry import run_cli  # noqa: E402
from library.errors import UserError  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("in_json", help="metadata to read (e.g. meta_clean.json)")
    parser.add_argument("out_json", help="cleaned metadata to write (may equal in_json)")
    parser.add_argument("--debug", action="store_true", help="print every changed caption and tag string")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if len(extra) == 1 and not extra[0].startswith("-"):
        # kohya's old form: train_data_dir in_json out_json; the folder is not needed.
        print(f"note: the first argument ({args.in_json}) is ignored; pass only IN_JSON OUT_JSON")
        args.in_json, args.out_json = args.out_json, extra[0]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not Path(args.in_json).is_file():
        raise UserError(f"{args.in_json}: metadata file not found; create it with finetune/merge_all_to_metadata.py")
    metadata = load_metadata(args.in_json)
    changed_tags = changed_captions = 0
    missing = []
    for key, entry in progress(metadata.items(), total=len(metadata), desc="cleaning", unit="entry"):
        tags, caption = entry.get("tags"), entry.get("caption")
        if tags is None and caption is None:
            missing.append(key)
        if tags is not None:
            cleaned, notes = clean_tags(tags)
            for note in notes:
                print(f"{key}: {note}")
            if cleaned != tags:
                changed_tags += 1
                if args.debug:
                    print(f"{key} tags\n  FROM: {tags}\n  TO:   {cleaned}")
            entry["tags"] = cleaned
        if caption is not None:
            cleaned = clean_caption(caption)
            if cleaned != caption:
                changed_captions += 1
                if args.debug:
                    print(f"{key} caption\n  FROM: {caption}\n  TO:   {cleaned}")
            entry["caption"] = cleaned
    save_metadata(args.out_json, metadata)
    lines = [
        f"entries: {len(metadata)} -> {args.out_json}",
        f"tags changed: {changed_tags}, captions changed: {changed_captions}",
    ] + [f"  no caption or tags: {key}" for key in missing]
    print_summary("cleaning summary", lines)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
