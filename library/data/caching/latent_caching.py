"""Plan and run latent caching for a set of images: decide buckets, skip fresh caches, encode the rest.

Shared by finetune/prepare_buckets_latents.py and tools/cache_latents.py; the trainer can call
`cache_latents` too. Only image headers and file hashes are read to decide what is fresh, so a
re-run over an unchanged folder decodes no image and runs no VAE.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from library.data.buckets import BucketManager, BucketPlacement, place_in_bucket, resize_and_crop, resize_and_crop_array
from library.data.images import ImageSkipped, SkipLog, alpha_of, composite, map_images, open_image, read_image_size
from library.data.caching.latent_cache import CacheFingerprint, LatentCache, cache_problem, file_sha256, latent_cache_path, save_latent_cache
from library.data.caching.latent_encoding import check_finite, encode_latents, seed_from_sha


@dataclass
class LatentJob:
    key: str
    image_path: Path
    placement: BucketPlacement
    cache_path: Path
    fingerprint: CacheFingerprint
    problem: str | None  # why the cache must be (re)made; None when it is fresh


@dataclass
class CachingOptions:
    flip_aug: bool = False
    alpha_mask: bool = False
    batch_size: int = 1
    workers: int = 0
    skip_existing: bool = False  # keep any cache of the right shape (kohya's weaker check)
    overwrite: bool = False  # re-encode even fresh caches
    sample: bool = True  # posterior sample (default) or mean
    dtype_name: str = "fp32"


@dataclass
class CachingReport:
    encoded: int = 0
    fresh: int = 0
    seconds: float = 0.0
    reasons: Counter = field(default_factory=Counter)
    buckets: Counter = field(default_factory=Counter)
    ar_errors: list[float] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.encoded / self.seconds if self.seconds > 0 else 0.0


def plan_jobs(
    images: dict[str, Path],
    buckets: BucketManager | None,
    vae_fp: str,
    options: CachingOptions,
    skipped: SkipLog,
    fixed_buckets: dict[str, tuple[int, int]] | None = None,
    placements: dict[str, BucketPlacement] | None = None,
) -> list[LatentJob]:
    """One job per usable image (fresh or not); unusable images go to `skipped`.

    `placements` maps keys to a placement decided by the trainer's dataset code (tools/cache_latents.py);
    `fixed_buckets` maps keys to a bucket decided earlier (meta_lat.json's train_resolution);
    other images get theirs from `buckets`.
    """
    jobs = []
    fixed_buckets, placements = fixed_buckets or {}, placements or {}
    for key, path in images.items():
        try:
            size = read_image_size(path)
            if key in placements:
                placement = placements[key]
            elif key in fixed_buckets:
                placement = place_in_bucket(*size, fixed_buckets[key])
            else:
                placement = buckets.place(*size)
        except (ImageSkipped, ValueError) as error:  # unreadable, or too small for any bucket
            skipped.add(path, str(error))
            continue
        fingerprint = CacheFingerprint(
            image_sha256=file_sha256(path),
            bucket_reso=placement.bucket,
            crop_ltrb=placement.crop_ltrb,
            vae_fingerprint=vae_fp,
            flip_aug=options.flip_aug,
            alpha_mask=options.alpha_mask,
        )
        cache_path = latent_cache_path(path, size)
        problem = "overwrite requested" if options.overwrite else cache_problem(cache_path, fingerprint, options.skip_existing)
        jobs.append(LatentJob(key, path, placement, cache_path, fingerprint, problem))
    return jobs


def _prepare(job: LatentJob):
    """Decode and crop one image (runs in worker threads)."""
    image = open_image(job.image_path)
    if image.size != job.placement.original_size:  # the file changed between planning and now
        raise ImageSkipped(f"size changed while caching ({image.size} vs {job.placement.original_size})")
    alpha = alpha_of(image)
    cropped = resize_and_crop(composite(image), job.placement)
    mask = None
    if job.fingerprint.alpha_mask:
        # An opaque image gets an all-ones mask: every pixel counts in the loss.
        bucket_w, bucket_h = job.placement.bucket
        mask = resize_and_crop_array(alpha, job.placement) if alpha is not None else np.ones((bucket_h, bucket_w), np.float32)
    return cropped, mask


def _encode_batch(vae, batch: list[tuple[LatentJob, Image.Image, object]], options: CachingOptions) -> None:
    jobs = [job for job, _, _ in batch]
    images = [image for _, image, _ in batch]
    seeds = [seed_from_sha(j.fingerprint.image_sha256) for j in jobs] if options.sample else None
    latents = encode_latents(vae, images, seeds)
    flipped = None
    if options.flip_aug:
        mirrored = [image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for image in images]
        flip_seeds = [seed_from_sha(j.fingerprint.image_sha256, True) for j in jobs] if options.sample else None
        flipped = encode_latents(vae, mirrored, flip_seeds)
    for index, (job, _, mask) in enumerate(batch):
        check_finite(latents[index], job.image_path, options.dtype_name)
        if flipped is not None:
            check_finite(flipped[index], job.image_path, options.dtype_name)
        cache = LatentCache(
            latents=latents[index],
            original_size=job.placement.original_size,
            crop_ltrb=job.placement.crop_ltrb,
            resized_size=job.placement.resized_size,
            latents_flipped=None if flipped is None else flipped[index],
            alpha_mask=mask,
        )
        save_latent_cache(job.cache_path, cache, job.fingerprint)


def run_jobs(vae, jobs: list[LatentJob], options: CachingOptions, skipped: SkipLog, progress=None) -> CachingReport:
    """Encode every job whose cache is not fresh, batching images of the same bucket."""
    report = CachingReport()
    for job in jobs:
        report.buckets[job.placement.bucket] += 1
        report.ar_errors.append(abs(job.placement.ar_error))
    todo = [job for job in jobs if job.problem is not None]
    report.fresh = len(jobs) - len(todo)
    report.reasons.update(job.problem for job in todo)
    pending: dict[tuple[int, int], list] = {}
    start = time.perf_counter()
    bar = progress(total=len(todo)) if progress else None
    for job, prepared, reason in map_images(todo, _prepare, options.workers):
        if prepared is None:
            skipped.add(job.image_path, reason)
            job.problem = "skipped"
        else:
            queue = pending.setdefault(job.placement.bucket, [])
            queue.append((job, prepared[0], prepared[1]))
            if len(queue) >= options.batch_size:
                _encode_batch(vae, queue, options)
                report.encoded += len(queue)
                pending[job.placement.bucket] = []
        if bar:
            bar.update(1)
    for queue in pending.values():
        if queue:
            _encode_batch(vae, queue, options)
            report.encoded += len(queue)
    if bar:
        bar.close()
    report.seconds = time.perf_counter() - start
    return report
