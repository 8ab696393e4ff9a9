"""Pieces shared by the latent-caching command lines: options, VAE setup, summary lines."""
from __future__ import annotations

import argparse

import torch

from library.data.buckets import BucketManager, parse_resolution, validate_bucket_options
from library.data.caching.latent_caching import CachingOptions, CachingReport
from library.precisions import DTYPES
from library.data.caching.latent_encoding import load_vae_for_caching, vae_fingerprint
from library.errors import UserError


def add_caching_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch_size", type=int, default=1, help="images per VAE batch (default 1)")
    parser.add_argument("--max_data_loader_n_workers", type=int, default=None, help="threads decoding images (default 0: in the main thread)")
    parser.add_argument("--mixed_precision", default="no", choices=["no", "fp16", "bf16"], help="VAE precision (default no = fp32)")
    parser.add_argument("--flip_aug", action="store_true", help="also cache latents of the mirrored image (for flip_aug training)")
    parser.add_argument("--alpha_mask", action="store_true", help="also cache the alpha channel as a loss mask")
    parser.add_argument("--skip_existing", action="store_true",
                        help="keep any existing cache of the right shape, even without our fingerprint (e.g. made by kohya)")
    parser.add_argument("--overwrite", action="store_true", help="re-encode every image even when its cache is fresh")
    parser.add_argument("--vae", default=None, help="a separate VAE (file or diffusers folder) instead of the model's own")


def caching_options(args) -> CachingOptions:
    if args.batch_size < 1:
        raise UserError(f"--batch_size {args.batch_size}: must be at least 1")
    return CachingOptions(
        flip_aug=args.flip_aug,
        alpha_mask=args.alpha_mask,
        batch_size=args.batch_size,
        workers=args.max_data_loader_n_workers or 0,
        skip_existing=args.skip_existing,
        overwrite=args.overwrite,
        dtype_name="fp32" if args.mixed_precision == "no" else args.mixed_precision,
    )


def bucket_manager(max_resolution, enable: bool, no_upscale: bool, min_reso: int, max_reso: int, steps: int) -> BucketManager:
    """kohya's buckets, or (bucketing disabled) one bucket of exactly `max_resolution`."""
    reso = parse_resolution(max_resolution) if isinstance(max_resolution, str) else tuple(max_resolution)
    validate_bucket_options(reso, min_reso, max_reso, steps)
    if not enable:
        return BucketManager.single(reso, steps)
    if no_upscale:
        print("note: --bucket_no_upscale: buckets follow the image sizes; min/max bucket resolution are not used")
    return BucketManager(no_upscale, reso, min_reso, max_reso, steps)


def load_vae_and_fingerprint(model: str, vae: str | None, dtype_name: str):
    """The VAE on the compute device in `dtype_name` ("fp32", "fp16", "bf16"), placed as the trainer
    places it (library/training/residency/placement.py), and its cache fingerprint."""
    from library.training.residency.placement import Placement, PrecisionPlan, compute_device

    if dtype_name not in DTYPES:
        raise UserError(f"VAE precision {dtype_name!r}: use fp32, fp16 or bf16")
    plan = PrecisionPlan(mixed_precision="no" if dtype_name == "fp32" else dtype_name)
    model_vae = load_vae_for_caching(model, vae, torch.float32, "cpu")
    Placement(compute_device(), plan).place("vae", model_vae, "cache latents")
    return model_vae, vae_fingerprint(model_vae, dtype_name)


def report_lines(report: CachingReport) -> list[str]:
    lines = [
        f"encoded: {report.encoded} in {report.seconds:.1f} s ({report.images_per_second:.2f} images/s)",
        f"reused fresh caches: {report.fresh}",
    ]
    if report.reasons:
        lines.append("why encoded: " + ", ".join(f"{reason} {count}" for reason, count in sorted(report.reasons.items())))
    for bucket, count in sorted(report.buckets.items()):
        lines.append(f"  bucket {bucket[0]}x{bucket[1]}: {count}")
    if report.ar_errors:
        lines.append(f"mean aspect-ratio error: {sum(report.ar_errors) / len(report.ar_errors):.4f}")
    return lines
