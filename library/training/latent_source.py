"""Latents for training samples: from fresh npz caches, an in-memory cache, or the VAE on the fly.

Posterior samples are drawn with a generator seeded by the image's content hash (as the
preparation script does), so cached, in-memory and on-the-fly latents of the same crop are the
same numbers and the first-step loss does not depend on the caching mode.
"""
from __future__ import annotations

import random
from collections import Counter, defaultdict

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from library.data.augmentation import color_augment, face_crop_placement, face_from_file_name, random_crop_placement
from library.data.buckets import resize_and_crop, resize_and_crop_array
from library.data.images import ImageSkipped, alpha_of, composite, open_image
from library.data.latent_cache import (
    CacheFingerprint,
    LatentCache,
    cache_problem,
    file_sha256,
    latent_cache_path,
    load_latent_cache,
    save_latent_cache,
)
from library.data.latent_encoding import check_finite, encode_latents, seed_from_sha, vae_fingerprint
from library.errors import UserError


class LatentSource:
    def __init__(self, items, vae, args, notices: list):
        self.items, self.vae, self.args, self.notices = items, vae, args, notices
        self.flip_aug = any(item.subset.flip_aug for item in items)
        self.alpha_mask = any(item.subset.alpha_mask for item in items) or args.alpha_mask
        self.augmenting = any(item.subset.color_aug or item.subset.random_crop or item.subset.face_crop_aug_range for item in items)
        self._sha = [None] * len(items)
        self._memory: dict[int, LatentCache] = {}
        self._condition_masks: dict[int, np.ndarray] = {}  # conditioning_data_dir masks at the item's own placement

    def sha(self, index: int) -> str:
        if self._sha[index] is None:
            self._sha[index] = file_sha256(self.items[index].image_path)
        return self._sha[index]

    # --- caching ----------------------------------------------------------------------------
    def prepare(self, rank: int = 0, world: int = 1, barrier=None) -> None:
        """Fill the cache as configured; reuse fresh npz files (always, for metadata datasets).

        With several processes and cache_latents_to_disk, each process encodes its share of the
        missing caches and writes them; after `barrier()` every process reads all of them.
        """
        args = self.args
        want_cache = args.cache_latents or args.cache_latents_to_disk
        if want_cache and self.augmenting:
            raise UserError("cache_latents cannot be combined with color_aug, random_crop or face_crop_aug_range "
                            "(they change the pixels every step); disable one")
        uses_metadata = any(item.subset.metadata_file for item in self.items)
        if not self.items or (not want_cache and not uses_metadata):
            return
        fingerprint_of_vae = vae_fingerprint(self.vae, "fp32")
        todo, reasons = [], Counter()
        for index, item in enumerate(tqdm(self.items, desc="checking latent caches", disable=len(self.items) < 50)):
            fingerprint = self._fingerprint(index, fingerprint_of_vae)
            path = latent_cache_path(item.image_path, item.placement.original_size)
            problem = cache_problem(path, fingerprint, shape_only=args.skip_cache_check)
            if problem is None:
                self._memory[index] = load_latent_cache(path)
            else:
                reasons[problem] += 1
                todo.append((index, fingerprint, path))
        if todo and not want_cache:
            self.notices.append(f"{len(todo)} images have no fresh latent cache ({_describe(reasons)}); encoding them every step")
            return
        if todo and args.cache_latents_to_disk and world > 1:
            # By item index, not list position: processes may see different caches as fresh while
            # another process is already writing, but they always agree on who owns an item.
            self._encode_and_store([entry for entry in todo if entry[0] % world == rank], to_disk=True)
            barrier()
            for index, _, path in todo:
                self._memory[index] = load_latent_cache(path)
        elif todo:
            self._encode_and_store(todo, to_disk=args.cache_latents_to_disk)
        if todo:
            self.notices.append(f"cached latents of {len(todo)} images ({_describe(reasons)}); {len(self.items) - len(todo)} were fresh")

    def _fingerprint(self, index: int, vae_fp: str) -> CacheFingerprint:
        placement = self.items[index].placement
        return CacheFingerprint(self.sha(index), placement.bucket, placement.crop_ltrb, vae_fp, self.flip_aug, self.alpha_mask)

    def _encode_and_store(self, todo, to_disk: bool) -> None:
        by_bucket = defaultdict(list)
        for entry in todo:
            by_bucket[self.items[entry[0]].bucket].append(entry)
        batch_size = max(1, self.args.vae_batch_size)
        progress = tqdm(total=len(todo), desc="caching latents")
        for entries in by_bucket.values():
            for start in range(0, len(entries), batch_size):
                chunk = entries[start : start + batch_size]
                caches = self._encode([e[0] for e in chunk])
                for (index, fingerprint, path), cache in zip(chunk, caches):
                    self._memory[index] = cache
                    if to_disk:
                        save_latent_cache(path, cache, fingerprint)
                progress.update(len(chunk))
        progress.close()

    def _load_crop(self, index: int, placement=None):
        item = self.items[index]
        placement = placement or item.placement
        try:
            image = open_image(item.image_path)
        except ImageSkipped as error:
            raise UserError(f"{item.image_path}: cannot be read any more ({error}); remove it or restore it") from None
        if image.size != placement.original_size:
            raise UserError(f"{item.image_path}: changed size since the dataset was scanned; restart training")
        alpha = alpha_of(image)
        cropped = resize_and_crop(composite(image), placement)
        mask = None
        if self.alpha_mask:
            w, h = placement.bucket
            mask = resize_and_crop_array(alpha, placement) if alpha is not None else np.ones((h, w), np.float32)
        return cropped, mask

    def _encode(self, indices: list[int]) -> list[LatentCache]:
        loaded = [self._load_crop(i) for i in indices]
        images = [image for image, _ in loaded]
        latents = encode_latents(self.vae, images, [seed_from_sha(self.sha(i)) for i in indices])
        flipped = None
        if self.flip_aug:
            mirrored = [image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for image in images]
            flipped = encode_latents(self.vae, mirrored, [seed_from_sha(self.sha(i), True) for i in indices])
        caches = []
        for k, index in enumerate(indices):
            item = self.items[index]
            check_finite(latents[k], item.image_path, "fp32")
            caches.append(LatentCache(latents[k], item.placement.original_size, item.placement.crop_ltrb,
                                      item.placement.resized_size, None if flipped is None else flipped[k], loaded[k][1]))
        return caches

    # --- reading ----------------------------------------------------------------------------
    def get(self, index: int, flip: bool, rng: random.Random | None = None):
        """(latents [4, h, w] float32 unscaled, alpha mask [h, w] or None, crop_ltrb applied) of one
        sample; `rng` drives random_crop and color_aug (only possible without a latent cache)."""
        item = self.items[index]
        cache = self._memory.get(index)
        if cache is not None:
            latents = cache.latents_flipped if flip else cache.latents
            if flip and latents is None:
                raise UserError(f"{item.image_path}: latent cache has no flipped latents; re-cache with flip_aug")
            mask = cache.alpha_mask
            crop = item.placement.flipped_crop_ltrb() if flip else item.placement.crop_ltrb
            placement = item.placement
        else:  # on the fly: augmentations differ per step, so nothing is stored
            placement = item.placement
            face = face_from_file_name(item.image_path) if item.subset.face_crop_aug_range else None
            if face is not None and rng is not None:
                placement = face_crop_placement(placement, face, item.subset.face_crop_aug_range, rng, item.subset.random_crop)
            elif item.subset.random_crop and rng is not None:
                placement = random_crop_placement(placement, rng)
            image, mask = self._load_crop(index, placement)
            if item.subset.color_aug and rng is not None:
                image = color_augment(image, rng)
            if flip:
                image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            latents = encode_latents(self.vae, [image], [seed_from_sha(self.sha(index), flip)])[0]
            check_finite(latents, item.image_path, "fp32")
            crop = placement.flipped_crop_ltrb() if flip else placement.crop_ltrb
        if item.mask_path is not None:  # a mask file, placed like this sample's image
            mask = self._condition_mask(index, placement)
        if mask is not None and flip:
            mask = mask[:, ::-1].copy()
        mask = None if mask is None else torch.from_numpy(np.asarray(mask))
        return torch.from_numpy(np.asarray(latents, dtype=np.float32)), mask, tuple(crop)

    def _condition_mask(self, index: int, placement) -> np.ndarray:
        from library.training.condition_masks import load_mask

        item = self.items[index]
        if placement is not item.placement:  # random or face crop: a placement of this step only
            return load_mask(item.mask_path, placement)
        if index not in self._condition_masks:
            self._condition_masks[index] = load_mask(item.mask_path, placement)
        return self._condition_masks[index]


def _describe(reasons: Counter) -> str:
    return ", ".join(f"{count} {reason}" for reason, count in reasons.most_common())
