"""Caption images with BLIP (transformers format, local folder): writes <stem>.caption beside each image."""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from library.data.tagging.blip_captioner import BlipCaptioner, check_caption_weights  # noqa: E402
from library.data.captions import caption_path, write_caption  # noqa: E402
from library.data.images import SkipLog, batched, map_images, open_image  # noqa: E402
from library.data import script_support as cli  # noqa: E402
from library.entry import run_cli  # noqa: E402
from library.errors import UserError  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("train_data_dir", help="folder of images to caption")
    p.add_argument("--caption_weights", default=None, help="local folder of a transformers BLIP captioning model")
    cli.caption_extension_option(p, ".caption")
    p.add_argument("--beam_search", action="store_true", help="beam search (deterministic) instead of nucleus sampling")
    p.add_argument("--batch_size", type=int, default=1, help="images per batch (default 1)")
    p.add_argument("--max_data_loader_n_workers", type=int, default=None, help="threads decoding images")
    p.add_argument("--num_beams", type=int, default=1, help="beams for --beam_search (default 1)")
    p.add_argument("--top_p", type=float, default=0.9, help="nucleus sampling top_p (default 0.9)")
    p.add_argument("--max_length", type=int, default=75, help="max caption length in tokens, prompt included (default 75)")
    p.add_argument("--min_length", type=int, default=5, help="min caption length in tokens, prompt included (default 5)")
    p.add_argument("--seed", type=int, default=42, help="random seed for sampling (default 42)")
    p.add_argument("--debug", action="store_true", help="print every caption")
    p.add_argument("--recursive", action="store_true", help="also caption images in sub-folders")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    folder = cli.existing_folder(args.train_data_dir)
    extension = cli.resolve_caption_extension(args)
    check_caption_weights(args.caption_weights)
    if args.batch_size < 1 or args.num_beams < 1:
        raise UserError("--batch_size and --num_beams must be at least 1")
    if not 0 < args.min_length <= args.max_length:
        raise UserError(f"--min_length {args.min_length} / --max_length {args.max_length}: need 0 < min_length <= max_length")
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    images = cli.find_images_or_fail(folder, args.recursive)
    captioner = BlipCaptioner(args.caption_weights, "cuda" if torch.cuda.is_available() else "cpu")

    def load(path):
        return captioner.preprocess(open_image(path))

    skipped, written = SkipLog(), 0
    with cli.progress(None, total=len(images), desc="captioning") as bar:
        for chunk in batched(map_images(images, load, args.max_data_loader_n_workers), args.batch_size):
            for path, _, reason in chunk:
                if reason is not None:
                    skipped.add(path, reason)
            usable = [(path, pixels) for path, pixels, _ in chunk if pixels is not None]
            if usable:
                captions = captioner.caption(torch.stack([p for _, p in usable]), args.beam_search, args.num_beams,
                                             args.top_p, args.min_length, args.max_length)
                for (path, _), text in zip(usable, captions):
                    write_caption(caption_path(path, extension), text)
                    written += 1
                    if args.debug:
                        print(f"{path}: {text}")
            bar.update(len(chunk))
    lines = [f"images: {len(images)}, captioned: {written}, skipped: {len(skipped)}",
             f"output: {extension} files beside the images ({'beam search' if args.beam_search else 'nucleus sampling'})"]
    cli.print_summary("captioning summary", lines, skipped)
    if written == 0:
        raise UserError(f"{folder}: no image could be captioned (all {len(images)} skipped, see above)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
