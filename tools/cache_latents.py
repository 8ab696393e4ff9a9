"""Pre-cache VAE latents for the dataset of a training config (kohya's pre-caching path).

The images and their buckets come from the trainer's own dataset code (DreamBooth folders, in_json
with meta_lat.json buckets, or dataset_config), so the caches are the ones training looks for;
fresh caches are reused, as in prepare_buckets_latents.py.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from library.preparation.caching_config import read_caching_config  # noqa: E402
from library.data.caching.latent_caching import CachingOptions, plan_jobs, run_jobs  # noqa: E402
from library.preparation.latent_cli import load_vae_and_fingerprint, report_lines  # noqa: E402
from library.data.script_support import print_summary, progress  # noqa: E402
from library.entry import run_cli  # noqa: E402
from library.errors import UserError  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config_file", required=True, help="training config (.toml)")
    p.add_argument("--overwrite", action="store_true", help="re-encode every image even when its cache is fresh")
    p.add_argument("--skip_existing", action="store_true", help="keep any existing cache of the right shape")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    config = read_caching_config(args.config_file)
    for notice in config.notices:
        print(f"note: {notice}")
    images = {str(item.image_path): item.image_path for item in config.items}
    # The trainer's dataset code already placed every image (meta_lat.json's bucket, or the bucket options).
    placements = {str(item.image_path): item.placement for item in config.items}
    dtype_name = "fp32" if config.no_half_vae or config.mixed_precision == "no" else config.mixed_precision
    options = CachingOptions(flip_aug=config.flip_aug, alpha_mask=config.alpha_mask, batch_size=max(1, config.vae_batch_size),
                             workers=config.max_data_loader_n_workers, skip_existing=args.skip_existing,
                             overwrite=args.overwrite, dtype_name=dtype_name)
    vae, vae_fp = load_vae_and_fingerprint(config.pretrained_model_name_or_path, config.vae, dtype_name)
    skipped = config.skipped
    jobs = plan_jobs(images, None, vae_fp, options, skipped, placements=placements)
    report = run_jobs(vae, jobs, options, skipped, lambda total: progress(range(total), total, "caching latents"))
    usable = len(jobs) - sum(1 for job in jobs if job.problem == "skipped")
    print_summary("cache_latents summary", [f"images: {len(images)}, usable: {usable}"] + report_lines(report), skipped)
    if usable == 0:
        raise UserError(f"{args.config_file}: no usable images (see above)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
