"""Pre-cache VAE latents for the dataset of a training config (kohya's pre-caching path).

Reads only the config keys it needs (model, vae, train_data_dir/in_json, resolution, bucket
options, flip_aug, alpha_mask); fresh caches are reused, as in prepare_buckets_latents.py.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from library.data.caching_config import read_caching_config  # noqa: E402
from library.data.dataset_images import dreambooth_images, finetune_images  # noqa: E402
from library.data.images import SkipLog  # noqa: E402
from library.data.latent_caching import CachingOptions, plan_jobs, run_jobs  # noqa: E402
from library.data.latent_cli import bucket_manager, load_vae_and_fingerprint, report_lines  # noqa: E402
from library.data.script_support import existing_folder, print_summary, progress  # noqa: E402
from library.errors import UserError, run_cli  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config_file", required=True, help="training config (.toml)")
    p.add_argument("--overwrite", action="store_true", help="re-encode every image even when its cache is fresh")
    p.add_argument("--skip_existing", action="store_true", help="keep any existing cache of the right shape")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    config = read_caching_config(args.config_file)
    train_dir = existing_folder(config.train_data_dir)
    fixed = {}
    if config.in_json:
        images, metadata = finetune_images(train_dir, config.in_json)
        # meta_lat.json already decided each image's bucket; keep it so cache and training agree.
        fixed = {k: tuple(v["train_resolution"]) for k, v in metadata.items() if k in images and v.get("train_resolution")}
    else:
        images, _ = dreambooth_images(train_dir, config.caption_extension)
    dtype_name = "fp32" if config.no_half_vae or config.mixed_precision == "no" else config.mixed_precision
    options = CachingOptions(flip_aug=config.flip_aug, alpha_mask=config.alpha_mask, batch_size=max(1, config.vae_batch_size),
                             workers=config.max_data_loader_n_workers, skip_existing=args.skip_existing,
                             overwrite=args.overwrite, dtype_name=dtype_name)
    buckets = bucket_manager(config.resolution, config.enable_bucket, config.bucket_no_upscale, config.min_bucket_reso,
                             config.max_bucket_reso, config.bucket_reso_steps)
    vae, vae_fp = load_vae_and_fingerprint(config.pretrained_model_name_or_path, config.vae, dtype_name)
    skipped = SkipLog()
    jobs = plan_jobs(images, buckets, vae_fp, options, skipped, fixed)
    report = run_jobs(vae, jobs, options, skipped, lambda total: progress(range(total), total, "caching latents"))
    usable = len(jobs) - sum(1 for job in jobs if job.problem == "skipped")
    print_summary("cache_latents summary", [f"images: {len(images)}, usable: {usable}"] + report_lines(report), skipped)
    if usable == 0:
        raise UserError(f"{train_dir}: no usable images (see above)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
