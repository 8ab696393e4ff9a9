"""Tag images with a WD14 tagger (ONNX): writes <stem>.txt files (or one metadata JSON/JSONL file)."""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from library.data.captions import caption_path, read_text_file  # noqa: E402
from library.data.images import SkipLog, batched, map_images, open_image  # noqa: E402
from library.data import script_support as cli  # noqa: E402
from library.data.tags import split_tags  # noqa: E402
from library.data.tagging.wd14_labels import TagOptions, display_names, parse_tag_replacement, read_selected_tags, select_tags  # noqa: E402
from library.data.tagging.wd14_tagger import DEFAULT_REPO_ID, LABEL_FILE, MODEL_FILE, OnnxTagger, find_model_folder, preprocess_for_tagger  # noqa: E402
from library.entry import run_cli  # noqa: E402
from library.errors import UserError  # noqa: E402
from library.file_io import write_json_atomic, write_text_atomic  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("train_data_dir", help="folder of images to tag")
    p.add_argument("--model_dir", default="wd14_tagger_model",
                   help="folder with model.onnx and selected_tags.csv, or kohya's layout <model_dir>/<repo_id with / as _>/")
    p.add_argument("--repo_id", default=DEFAULT_REPO_ID, help="tagger name, used for kohya's folder layout")
    p.add_argument("--force_download", action="store_true", help="not supported: models are never downloaded")
    p.add_argument("--onnx", action="store_true", help="accepted for kohya compatibility (ONNX is the only backend)")
    p.add_argument("--batch_size", type=int, default=1, help="images per batch (a fixed batch size in the model wins)")
    p.add_argument("--max_data_loader_n_workers", type=int, default=None, help="threads decoding images")
    cli.caption_extension_option(p, ".txt")
    p.add_argument("--thresh", type=float, default=0.35, help="default threshold for general and character tags")
    p.add_argument("--general_threshold", type=float, default=None, help="threshold for general tags (default --thresh)")
    p.add_argument("--character_threshold", type=float, default=None, help="threshold for character tags (default --thresh)")
    p.add_argument("--recursive", action="store_true", help="also tag images in sub-folders")
    p.add_argument("--remove_underscore", action="store_true", help="write 'long hair' for long_hair (kaomoji keep theirs)")
    p.add_argument("--debug", action="store_true", help="print the tags of every image")
    p.add_argument("--undesired_tags", default="", help="comma-separated tags never to write")
    p.add_argument("--frequency_tags", action="store_true", help="print how often each tag was written")
    p.add_argument("--append_tags", action="store_true", help="keep existing tags in the file and add new ones after them")
    p.add_argument("--use_rating_tags", action="store_true", help="put the rating tag first")
    p.add_argument("--use_rating_tags_as_last_tag", action="store_true", help="put the rating tag last")
    p.add_argument("--character_tags_first", action="store_true", help="put character tags before general tags")
    p.add_argument("--always_first_tags", default=None, help="comma-separated tags moved to the front when present, e.g. 1girl,1boy")
    p.add_argument("--caption_separator", default=", ", help="separator written between tags (default ', ')")
    p.add_argument("--tag_replacement", default=None, help="'source,target;source2,target2' (\\, and \\; escape , and ;)")
    p.add_argument("--character_tag_expand", action="store_true", help="'name_(series)' -> 'name, series'")
    p.add_argument("--output_path", default=None, help="write one metadata .json or .jsonl instead of caption files")
    return p


def tag_options(args) -> TagOptions:
    separator = args.caption_separator.strip() or ","
    return TagOptions(
        general_threshold=args.thresh if args.general_threshold is None else args.general_threshold,
        character_threshold=args.thresh if args.character_threshold is None else args.character_threshold,
        remove_underscore=args.remove_underscore,
        undesired_tags=set(split_tags(args.undesired_tags, separator)),
        tag_replacement=parse_tag_replacement(args.tag_replacement),
        character_tags_first=args.character_tags_first,
        always_first_tags=split_tags(args.always_first_tags or "", separator),
        use_rating_tags=args.use_rating_tags,
        use_rating_tags_as_last_tag=args.use_rating_tags_as_last_tag,
        character_tag_expand=args.character_tag_expand,
        caption_separator=args.caption_separator,
    )


def _merge_existing(path: Path, tags: list[str], separator: str) -> list[str]:
    """--append_tags: existing tags first, then the new ones not already there."""
    existing = split_tags(read_text_file(path) or "", separator.strip() or ",")
    return existing + [t for t in tags if t not in existing]


def write_output(path: str, results: dict[str, dict]) -> None:
    if path.endswith(".jsonl"):
        lines = [json.dumps({"image_path": k, "caption": v["tags"], "image_size": v["image_size"]}, ensure_ascii=False) for k, v in results.items()]
        write_text_atomic(path, "".join(line + "\n" for line in lines))
    else:
        write_json_atomic(path, results)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    folder = cli.existing_folder(args.train_data_dir)
    if args.force_download:
        raise UserError(f"--force_download: this toolkit never downloads; put {MODEL_FILE} and {LABEL_FILE} in --model_dir")
    if args.batch_size < 1:
        raise UserError(f"--batch_size {args.batch_size}: must be at least 1")
    extension = cli.resolve_caption_extension(args)
    options = tag_options(args)
    model_folder = find_model_folder(args.model_dir, args.repo_id)
    labels = read_selected_tags(model_folder / LABEL_FILE)
    tagger = OnnxTagger(model_folder / MODEL_FILE, args.batch_size)
    images = cli.find_images_or_fail(folder, args.recursive)
    names = display_names(labels, options)

    def load(path):
        image = open_image(path)
        return image.size, preprocess_for_tagger(image, tagger.image_size)

    skipped, frequency, results, written = SkipLog(), Counter(), {}, 0
    loaded = map_images(images, load, args.max_data_loader_n_workers)
    with cli.progress(None, total=len(images), desc="tagging") as bar:
        for chunk in batched(loaded, tagger.batch_size):
            usable = [(path, value) for path, value, reason in chunk if value is not None]
            for path, _, reason in chunk:
                if reason is not None:
                    skipped.add(path, reason)
            if usable:
                probs = tagger(np.stack([value[1] for _, value in usable]))
                for (path, (size, _)), row in zip(usable, probs):
                    if len(row) != len(labels.names):
                        raise UserError(f"{model_folder}: model gives {len(row)} outputs but {LABEL_FILE} has {len(labels.names)} rows")
                    selected = select_tags(row, labels, names, options)
                    tags = selected.tags
                    target = caption_path(path, extension)
                    if args.append_tags:
                        tags = _merge_existing(target, tags, args.caption_separator)
                    frequency.update(selected.tags)
                    text = args.caption_separator.join(tags)
                    if args.output_path:
                        results[str(path)] = {"tags": text, "image_size": list(size)}
                    else:
                        write_text_atomic(target, text + "\n")
                    written += 1
                    if args.debug:
                        print(f"{path}:\n  rating: {selected.rating or ''}\n  character: {', '.join(selected.character)}\n"
                              f"  general: {', '.join(selected.general)}")
            bar.update(len(chunk))
    if args.output_path and results:
        write_output(args.output_path, results)
    lines = [f"model: {model_folder} (input {tagger.image_size}px, batch {tagger.batch_size})",
             f"images: {len(images)}, tagged: {written}, skipped: {len(skipped)}",
             f"output: {args.output_path or f'{extension} files beside the images'}"]
    if args.frequency_tags:
        lines.append("tag frequency:")
        lines += [f"  {tag}: {count}" for tag, count in sorted(frequency.items(), key=lambda kv: (-kv[1], kv[0]))]
    cli.print_summary("tagging summary", lines, skipped)
    if written == 0:
        raise UserError(f"{folder}: no image could be tagged (all {len(images)} skipped, see above)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
