"""The latent cache file (DESIGN.md 4.3) and how to tell whether one is still valid.

`<image path without extension>_<W:04d>x<H:04d>_sdxl.npz` (W x H = original image size) holds
`latents` float32 [4, h/8, w/8] (unscaled VAE posterior sample; 0.13025 is applied at train
time), `original_size` [W, H], `crop_ltrb` [l, t, r, b] (the crop applied to the resized image),
and optionally `latents_flipped` and `alpha_mask` [h, w] -- the keys kohya reads. We add
`resized_size` and fingerprint keys (`image_sha256`, `bucket_reso`, `vae_fingerprint`,
`preprocess`, `flip_aug`, `alpha_mask_cached`) so that a changed image, bucket or VAE is noticed;
kohya ignores keys it does not know.
"""
from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from library.errors import UserError
from library.file_io import atomic_path

LATENT_CACHE_SUFFIX = "_sdxl.npz"
# Bump when resizing/cropping/encoding changes, so caches made the old way are redone.
PREPROCESS_VERSION = "box-down-lanczos-up-center-crop-v1"
_FINGERPRINT_KEYS = ("image_sha256", "bucket_reso", "vae_fingerprint", "preprocess", "flip_aug", "alpha_mask_cached")


def latent_cache_path(image_path: str | os.PathLike, original_size: tuple[int, int]) -> Path:
    image_path = Path(image_path)
    width, height = original_size
    return image_path.with_name(f"{image_path.stem}_{width:04d}x{height:04d}{LATENT_CACHE_SUFFIX}")


def file_sha256(path: str | os.PathLike) -> str:
    """Content fingerprint of an image file: a touched (same bytes) file keeps its cache."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class CacheFingerprint:
    """Everything a cached latent depends on besides the code version."""

    image_sha256: str
    bucket_reso: tuple[int, int]
    crop_ltrb: tuple[int, int, int, int]
    vae_fingerprint: str
    flip_aug: bool = False
    alpha_mask: bool = False
    preprocess: str = PREPROCESS_VERSION


@dataclass
class LatentCache:
    latents: np.ndarray  # float32 [4, h/8, w/8]
    original_size: tuple[int, int]
    crop_ltrb: tuple[int, int, int, int]
    resized_size: tuple[int, int] | None = None
    latents_flipped: np.ndarray | None = None
    alpha_mask: np.ndarray | None = None  # float32 [h, w] in 0-1, at bucket resolution


def save_latent_cache(path: str | os.PathLike, cache: LatentCache, fingerprint: CacheFingerprint) -> None:
    """Write the npz atomically (a killed run never leaves a half-written cache)."""
    arrays = {
        "latents": np.ascontiguousarray(cache.latents, dtype=np.float32),
        "original_size": np.array(cache.original_size, dtype=np.int64),
        "crop_ltrb": np.array(cache.crop_ltrb, dtype=np.int64),
        "image_sha256": np.array(fingerprint.image_sha256),
        "bucket_reso": np.array(fingerprint.bucket_reso, dtype=np.int64),
        "vae_fingerprint": np.array(fingerprint.vae_fingerprint),
        "preprocess": np.array(fingerprint.preprocess),
        "flip_aug": np.array(fingerprint.flip_aug),
        "alpha_mask_cached": np.array(fingerprint.alpha_mask),
    }
    if cache.resized_size is not None:
        arrays["resized_size"] = np.array(cache.resized_size, dtype=np.int64)
    if cache.latents_flipped is not None:
        arrays["latents_flipped"] = np.ascontiguousarray(cache.latents_flipped, dtype=np.float32)
    if cache.alpha_mask is not None:
        arrays["alpha_mask"] = np.ascontiguousarray(cache.alpha_mask, dtype=np.float32)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:  # a file object, so numpy does not append ".npz" to the name
            np.savez(handle, **arrays)


def _open_npz(path: Path):
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise UserError(f"{path}: latent cache is unreadable ({error}); delete it and run the caching again") from None


def load_latent_cache(path: str | os.PathLike) -> LatentCache:
    """Read a cache written by us or by kohya (fingerprint keys are optional)."""
    path = Path(path)
    with _open_npz(path) as npz:
        missing = [k for k in ("latents", "original_size", "crop_ltrb") if k not in npz.files]
        if missing:
            raise UserError(f"{path}: latent cache lacks {', '.join(missing)}; delete it and run the caching again")
        return LatentCache(
            latents=npz["latents"].astype(np.float32, copy=False),
            original_size=tuple(int(v) for v in npz["original_size"]),
            crop_ltrb=tuple(int(v) for v in npz["crop_ltrb"]),
            resized_size=tuple(int(v) for v in npz["resized_size"]) if "resized_size" in npz.files else None,
            latents_flipped=npz["latents_flipped"] if "latents_flipped" in npz.files else None,
            alpha_mask=npz["alpha_mask"] if "alpha_mask" in npz.files else None,
        )


def _shape_problem(npz, bucket: tuple[int, int], flip_aug: bool, alpha_mask: bool) -> str | None:
    expected = (bucket[1] // 8, bucket[0] // 8)
    if "latents" not in npz.files or tuple(npz["latents"].shape[1:3]) != expected:
        return "bucket changed"
    if flip_aug and "latents_flipped" not in npz.files:
        return "flipped latents missing"
    if alpha_mask and "alpha_mask" not in npz.files:
        return "alpha mask missing"
    return None


def cache_problem(path: str | os.PathLike, fingerprint: CacheFingerprint, shape_only: bool = False) -> str | None:
    """Why the cache at `path` cannot be reused for `fingerprint`, or None when it is fresh.

    `shape_only` accepts any cache whose latents have the bucket's shape (kohya's
    --skip_existing test), e.g. caches made by another tool without our fingerprint keys.
    """
    path = Path(path)
    if not path.exists():
        return "not cached"
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError):
        return "unreadable cache"
    with npz:
        try:
            problem = _shape_problem(npz, fingerprint.bucket_reso, fingerprint.flip_aug, fingerprint.alpha_mask)
            if problem or shape_only:
                return problem
            if any(k not in npz.files for k in _FINGERPRINT_KEYS):
                return "no fingerprint (made by another tool)"
            if str(npz["image_sha256"]) != fingerprint.image_sha256:
                return "image content changed"
            if tuple(int(v) for v in npz["bucket_reso"]) != tuple(fingerprint.bucket_reso):
                return "bucket changed"
            if tuple(int(v) for v in npz["crop_ltrb"]) != tuple(fingerprint.crop_ltrb):
                return "crop changed"
            if str(npz["vae_fingerprint"]) != fingerprint.vae_fingerprint:
                return "VAE changed"
            if str(npz["preprocess"]) != fingerprint.preprocess:
                return "preprocessing changed"
            if bool(npz["flip_aug"]) != fingerprint.flip_aug or bool(npz["alpha_mask_cached"]) != fingerprint.alpha_mask:
                return "flip/alpha options changed"
        except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError):
            return "unreadable cache"
    return None
