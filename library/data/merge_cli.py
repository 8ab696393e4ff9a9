"""The shared body of the three merge_*_to_metadata scripts."""
from __future__ import annotations

import argparse
from pathlib import Path

from library.data.captions import normalize_extension
from library.data.merge import MergeReport, merge_text_files
from library.data.metadata import keys_for_images, load_metadata, save_metadata
from library.data.script_support import existing_folder, find_images_or_fail, print_summary
from library.errors import UserError


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("train_data_dir", help="folder of training images")
    parser.add_argument("out_json", help="metadata file to write (e.g. meta_clean.json)")
    parser.add_argument("--in_json", default=None, help="metadata to start from (default: out_json when it exists)")
    parser.add_argument("--full_path", action="store_true", help="use the image path as key instead of the file stem")
    parser.add_argument("--recursive", action="store_true", help="also look in sub-folders")
    parser.add_argument("--debug", action="store_true", help="print every merged entry")


def run_merge(args, fields: list[tuple[str, str]]) -> int:
    """Merge each (field name, extension) into the metadata and write it; returns the exit code."""
    train_dir = existing_folder(args.train_data_dir)
    in_json = args.in_json
    if in_json is None and Path(args.out_json).is_file():
        in_json = args.out_json  # kohya: re-running updates the existing file
    if in_json is not None and not Path(in_json).is_file():
        raise UserError(f"{in_json}: --in_json does not exist")
    metadata = load_metadata(in_json) if in_json else {}
    images = keys_for_images(find_images_or_fail(train_dir, args.recursive), args.full_path)
    reports = {}
    for field_name, extension in fields:
        reports[field_name] = merge_text_files(metadata, images, field_name, normalize_extension(extension), MergeReport())
    if args.debug:
        for key in images:
            print(f"{key}: {metadata.get(key)}")
    save_metadata(args.out_json, metadata)
    lines = [f"images: {len(images)}", f"entries written: {len(metadata)} -> {args.out_json}"]
    for field_name, report in reports.items():
        lines.append(f"{field_name}: {report.merged} merged, {len(report.missing)} missing")
        lines += [f"  missing {path}" for path in report.missing]
        lines += [f"  only the first line used: {path}" for path in report.multi_line]
    print_summary("merge summary", lines)
    return 0
