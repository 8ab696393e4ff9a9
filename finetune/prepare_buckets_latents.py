"""Assign aspect-ratio buckets, cache VAE latents as <image>_<W>x<H>_sdxl.npz, and write meta_lat.json
(the input metadata plus image_size and train_resolution). Fresh caches are reused."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from library.data.buckets import extreme_placements_notice  # noqa: E402
from library.data.images import SkipLog  # noqa: E402
from library.data.caching.latent_caching import plan_jobs, run_jobs  # noqa: E402
from library.preparation import latent_cli  # noqa: E402
from library.data.metadata import keys_for_images, load_metadata, save_metadata  # noqa: E402
from library.data.script_support import existing_folder, find_images_or_fail, print_summary, progress  # noqa: E402
from library.entry import run_cli  # noqa: E402
from library.errors import UserError  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("train_data_dir", help="folder of training images")
    parser.add_argument("in_json", help="metadata to read (meta_clean.json)")
    parser.add_argument("out_json", help="metadata to write (meta_lat.json)")
    parser.add_argument("model_name_or_path", help="SDXL model (single .safetensors or diffusers folder) whose VAE encodes")
    parser.add_argument("--max_resolution", default="1024,1024", help="training resolution 'width,height' (default 1024,1024)")
    parser.add_argument("--min_bucket_reso", type=int, default=256, help="smallest bucket side (default 256)")
    parser.add_argument("--max_bucket_reso", type=int, default=1024, help="largest bucket side (default 1024)")
    parser.add_argument("--bucket_reso_steps", type=int, default=64, help="bucket side step, a multiple of 32 (default 64)")
    parser.add_argument("--bucket_no_upscale", action="store_true", help="never enlarge images; buckets follow their sizes")
    parser.add_argument("--full_path", action="store_true", help="metadata keys are image paths (as given to merge with --full_path)")
    parser.add_argument("--recursive", action="store_true", help="also look in sub-folders")
    latent_cli.add_caching_arguments(parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    train_dir = existing_folder(args.train_data_dir)
    if not Path(args.in_json).is_file():
        raise UserError(f"{args.in_json}: in_json not found; create it with finetune/merge_all_to_metadata.py")
    metadata = load_metadata(args.in_json)
    options = latent_cli.caching_options(args)
    buckets = latent_cli.bucket_manager(args.max_resolution, True, args.bucket_no_upscale, args.min_bucket_reso, args.max_bucket_reso,
                             args.bucket_reso_steps)
    images = keys_for_images(find_images_or_fail(train_dir, args.recursive), args.full_path)
    if metadata and not set(metadata) & set(images):  # before any latent is computed
        raise UserError(
            f"{args.in_json}: none of its {len(metadata)} keys names an image in {train_dir} (it has {next(iter(metadata))!r}, "
            f"this folder gives {next(iter(images))!r}); it was made on another machine or with --full_path set differently: "
            f"re-run finetune/merge_all_to_metadata.py on this machine, with --full_path here and there or in neither"
        )
    vae, vae_fp = latent_cli.load_vae_and_fingerprint(args.model_name_or_path, args.vae, options.dtype_name)

    skipped = SkipLog()
    jobs = plan_jobs(images, buckets, vae_fp, options, skipped)
    report = run_jobs(vae, jobs, options, skipped, lambda total: progress(range(total), total, "caching latents"))

    skipped_paths = {path for path, _ in skipped.entries}
    output, no_entry = {}, []
    for job in jobs:
        if job.image_path in skipped_paths:
            continue
        if job.key not in metadata:
            no_entry.append(job.key)
        bucket = job.placement.bucket
        entry = dict(metadata.get(job.key, {}))
        entry["image_size"] = list(job.placement.original_size)
        entry["train_resolution"] = [bucket[0] - bucket[0] % 8, bucket[1] - bucket[1] % 8]
        output[job.key] = entry
    orphans = sorted(set(metadata) - set(images))
    if output:
        save_metadata(args.out_json, output)
    lines = [f"images: {len(images)}, usable: {len(output)}, skipped: {len(skipped)}"] + latent_cli.report_lines(report)
    extreme = extreme_placements_notice(train_dir, [(job.image_path.name, job.placement) for job in jobs
                                                    if job.image_path not in skipped_paths])
    if extreme:
        lines.append(extreme)
    if no_entry:
        lines.append(f"images without an entry in {args.in_json} (no caption/tags): {len(no_entry)}")
        lines += [f"  {key}" for key in no_entry]
    if orphans:
        lines.append(f"entries in {args.in_json} without an image (left out of {args.out_json}): {len(orphans)}")
        lines += [f"  {key}" for key in orphans]
    lines.append(f"metadata: {args.out_json}" if output else "metadata: not written (nothing usable)")
    print_summary("prepare_buckets_latents summary", lines, skipped)
    if not output:
        raise UserError(f"{train_dir}: no usable images (all {len(images)} skipped, see above)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
