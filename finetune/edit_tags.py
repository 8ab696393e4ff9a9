"""Edit the tag files of a training folder: add a trigger word, remove, replace or deduplicate tags,
create missing files, and report tag frequencies. --dry_run shows a diff and writes nothing."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from library.data.captions import normalize_extension, read_text_file  # noqa: E402
from library.data.script_support import existing_folder, find_images_or_fail, print_summary  # noqa: E402
from library.data.tag_files import edit_tag_files  # noqa: E402
from library.data.tags import TagEdit, format_frequency, parse_replacements, parse_tag_list, split_tags, tag_frequency  # noqa: E402
from library.entry import run_cli  # noqa: E402
from library.errors import UserError  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("train_data_dir", help="folder of training images")
    parser.add_argument("--caption_extension", default=".txt", help="extension of the files to edit (default .txt; .caption for BLIP)")
    parser.add_argument("--add", default="", help="comma-separated tags to add first, e.g. a trigger word")
    parser.add_argument("--append", action="store_true", help="add the --add tags at the end instead of first")
    parser.add_argument("--remove", default="", help="comma-separated tags to remove")
    parser.add_argument(
        "--remove_file", action="append", default=[],
        help="file of tags to remove (one per line or comma-separated), e.g. tags that describe the trigger concept",
    )
    parser.add_argument("--replace", action="append", default=[], metavar="OLD=NEW", help="replace a tag (repeatable); OLD= deletes it")
    parser.add_argument("--dedupe", action="store_true", help="remove repeated tags (keeping the first)")
    parser.add_argument("--create_missing", action="store_true", help="create caption files for images that have none")
    parser.add_argument("--caption_separator", default=", ", help="separator between tags (default ', ')")
    parser.add_argument("--recursive", action="store_true", help="also edit files in sub-folders")
    parser.add_argument("--dry_run", action="store_true", help="show a diff of what would change; write nothing")
    parser.add_argument("--frequency", type=int, nargs="?", const=0, default=None, metavar="N",
                        help="print a tag-frequency report after editing (top N; all when N is omitted)")
    return parser


def _tags_from_files(paths: list[str]) -> set[str]:
    tags: set[str] = set()
    for name in paths:
        text = read_text_file(name)
        if text is None:
            raise UserError(f"{name}: --remove_file not found")
        for line in text.splitlines():
            tags.update(split_tags(line))
    return tags


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    folder = existing_folder(args.train_data_dir)
    extension = normalize_extension(args.caption_extension)
    try:
        replacements = parse_replacements(args.replace)
    except ValueError as error:
        raise UserError(f"--replace: {error}; write it as OLD=NEW") from None
    edit = TagEdit(
        add=parse_tag_list(args.add),
        append=args.append,
        remove=set(parse_tag_list(args.remove)) | _tags_from_files(args.remove_file),
        replace=replacements,
        dedupe=args.dedupe,
    )
    images = find_images_or_fail(folder, args.recursive)
    report = edit_tag_files(images, extension, edit, args.caption_separator, args.create_missing, args.dry_run)
    for diff in report.diffs:
        sys.stdout.write(diff)
    verb = "would change" if args.dry_run else "changed"
    lines = [
        f"images: {len(images)}",
        f"files {verb}: {len(report.changed)}, {'would be ' if args.dry_run else ''}created: {len(report.created)}, "
        f"unchanged: {report.unchanged}",
    ]
    if report.no_file:
        lines.append(f"images without a {extension} file: {len(report.no_file)} (use --create_missing to create them)")
        lines += [f"  {path}" for path in report.no_file]
    if args.frequency is not None:
        lines.append("tag frequency (files containing the tag):")
        lines += ["  " + line for line in format_frequency(tag_frequency(report.tag_lists), args.frequency or None)]
    print_summary("edit_tags summary", lines)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
