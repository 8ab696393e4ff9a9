"""Pre-cache SDXL text-encoder outputs (<stem>_te_outputs.npz) for the captions of a training config.

The dataset and each caption come from the trainer's own code (same folders, class tokens,
prefix/suffix), so the trainer with cache_text_encoder_outputs_to_disk reuses these files. Only
valid when captions are the same every step: shuffle_caption, caption dropout, tag dropout, token
warm-up and wildcards are refused. Fresh caches (same caption, same text encoders) are reused.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from library.preparation.caching_config import read_caching_config  # noqa: E402
from library.data.script_support import print_summary, progress  # noqa: E402
from library.data.caching import text_encoder_cache as te_cache  # noqa: E402
from library.entry import run_cli  # noqa: E402
from library.errors import UserError  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config_file", required=True, help="training config (.toml)")
    p.add_argument("--overwrite", action="store_true", help="re-encode even when the cache is fresh")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    config = read_caching_config(args.config_file)
    if config.caption_randomisers:
        raise UserError(f"{args.config_file}: {', '.join(config.caption_randomisers)} change captions every step, so their "
                        "text-encoder outputs cannot be cached; remove them or do not cache text-encoder outputs")
    from library.models.sdxl_loader import load_sdxl
    from library.training.residency.placement import Placement, PrecisionPlan, compute_device
    from library.training.inputs.text_conditioning import cached_captions

    for notice in config.notices:
        print(f"note: {notice}")
    images = {str(item.image_path): item.image_path for item in config.items}
    captions = dict(zip(images, cached_captions(config.items)))
    model = load_sdxl(config.pretrained_model_name_or_path)
    # the dtypes training uses (mixed_precision, fp8_base), so the outputs and fingerprint match its own
    placement = Placement(compute_device(), PrecisionPlan.from_args(config, config.mixed_precision))
    encoders = [placement.place(name, encoder.eval(), "cache text-encoder outputs")
                for name, encoder in zip(("text_encoder1", "text_encoder2"), model.text_encoders)]
    fingerprint = te_cache.text_encoder_fingerprint(encoders, config.max_token_length, config.weighted_captions)
    stale = {key: image for key, image in images.items()
             if args.overwrite or not te_cache.te_cache_is_fresh(te_cache.te_cache_path(image), captions[key], fingerprint)}
    with placement.autocast():
        outputs = te_cache.encode_texts(model.tokenizers, encoders, [captions[key] for key in stale], config.max_token_length,
                               config.weighted_captions, config.text_encoder_batch_size or te_cache.DEFAULT_BATCH)
    for key, image in progress(stale.items(), total=len(stale), desc="writing text encoder outputs"):
        hidden1, hidden2, pool2 = (te_cache.storage_array(t) for t in outputs[captions[key]])
        te_cache.save_te_cache(te_cache.te_cache_path(image), hidden1, hidden2, pool2, captions[key], fingerprint)
    encoded, fresh = len(stale), len(images) - len(stale)
    empty = sum(1 for key in images if not captions[key])
    lines = [f"images: {len(images)}, encoded: {encoded}, reused fresh caches: {fresh}",
             f"states per caption: {2 + 75 * ((config.max_token_length or 75) // 75)}"]
    if empty:
        lines.append(f"warning: {empty} image(s) have an empty caption")
    print_summary("cache_text_encoder_outputs summary", lines, config.skipped)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
