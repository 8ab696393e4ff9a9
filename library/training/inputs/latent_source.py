"""Latents for training samples: from fresh npz caches, an in-memory cache, or the VAE on the fly.

Posterior samples are drawn with a generator seeded by the image's content hash (as the
preparation script does), so cached, in-memory and on-the-fly latents of the same crop are the
same numbers and the first-step loss does not depend on the caching mode.

An image that cannot be read any more (cut short, deleted, replaced by another size) is recorded
as broken and raises `ImageBroken`; the trainer leaves it out of every later batch and lists it at
the end, as the preparation scripts do. Only when more than 10% of the images break does the run
stop (`too_many_broken`).
"""
from __future__ import annotations

import random
from collections import Counter, defaultdict

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from library.data.images import ImageSkipped, open_image
from library.data.caching.latent_cache import (
    CacheFingerprint,
    LatentCache,
    cache_problem,
    file_sha256,
    latent_cache_path,
    load_latent_cache,
    save_latent_cache,
)
from library.precisions import precision_name
from library.data.caching.latent_encoding import check_finite, encode_latents, seed_from_sha, vae_fingerprint
from library.errors import UserError
from library.training.inputs.pixel_loading import PixelPipeline, PixelsUnreadable


BROKEN_SHARE = 0.10  # more broken images than this share (and more than one) stops the run


class ImageBroken(UserError):
    """A training image could not be read during the run; it is skipped from now on."""

    def __init__(self, index: int, path, reason: str):
        self.index, self.path, self.reason = index, path, reason
        super().__init__(f"{path}: {reason}")


class LatentSource:
    def __init__(self, items, vae, args, notices: list):
        self.items, self.vae, self.args, self.notices = items, vae, args, notices
        self.flip_aug = any(item.subset.flip_aug for item in items)
        self.alpha_mask = any(item.subset.alpha_mask for item in items) or args.alpha_mask
        self.augmenting = any(item.subset.color_aug or item.subset.random_crop or item.subset.face_crop_aug_range for item in items)
        self._sha = [None] * len(items)
        self._memory: dict[int, LatentCache] = {}
        self.broken: dict[int, str] = {}  # item index -> why it cannot be read; skipped for the rest of the run
        self._shared_broken: set[int] = set()  # the broken images every process already knows of
        self._condition_masks: dict[int, np.ndarray] = {}  # conditioning_data_dir masks at the item's own placement
        self.pixels = PixelPipeline(items, self.alpha_mask)  # decoding, crops and augmentation (also in loader workers)

    @property
    def vae_dtype_name(self) -> str:
        """"fp32", "fp16" or "bf16": part of the cache fingerprint (the caching tools use the same names)."""
        return precision_name(next(self.vae.parameters()).dtype)

    @property
    def needs_vae(self) -> bool:
        """True while some sample has no cached latents (it is encoded on the fly every step)."""
        return len(self._memory) < len(self.items)

    @property
    def cached_indices(self) -> set[int]:
        return set(self._memory)

    def sha(self, index: int) -> str:
        if self._sha[index] is None:
            try:
                self._sha[index] = file_sha256(self.items[index].image_path)
            except OSError as error:
                self._break(index, f"cannot be read any more ({error.strerror or error})")
        return self._sha[index]

    # --- broken images ----------------------------------------------------------------------
    def _break(self, index: int, reason: str):
        if index not in self.broken:
            self.broken[index] = reason
            tqdm.write(f"skipping {self.items[index].image_path}: {reason} (left out for the rest of the run)")
        raise ImageBroken(index, self.items[index].image_path, self.broken[index])

    def usable(self, indices: list[int], seeds: list[int]) -> tuple[list[int], list[int]]:
        """The batch without its broken images (the seeds of the others are unchanged)."""
        kept = [(i, s) for i, s in zip(indices, seeds) if i not in self.broken]
        return [i for i, _ in kept], [s for _, s in kept]

    def share_broken(self, accelerator) -> None:
        """With several processes each one reads only its own batches, so each learns of different
        broken images. Every process must take the stop decision at the same batch (a process that
        stopped alone would leave the others waiting in the next gradient all-reduce), so the lists
        are merged: a one-number all-reduce per batch, and the lists themselves only travel when some
        process has found a new broken image."""
        if accelerator.num_processes == 1:
            return
        news = torch.tensor([len(set(self.broken) - self._shared_broken)], device=accelerator.device)
        if accelerator.reduce(news, reduction="sum").item() == 0:
            return
        from accelerate.utils import gather_object

        for entries in gather_object([sorted(self.broken.items())]):
            for index, reason in entries:
                self.broken.setdefault(index, reason)
        self._shared_broken = set(self.broken)

    def too_many_broken(self) -> bool:
        return len(self.broken) > max(1, int(len(self.items) * BROKEN_SHARE))

    def broken_lines(self) -> list[str]:
        return [f"  skipped {self.items[i].image_path}: {reason}" for i, reason in sorted(self.broken.items())]

    def too_many_error(self, saved: str = "") -> UserError:
        return UserError(
            f"{len(self.broken)} of {len(self.items)} training images could not be read during the run (more than "
            f"{BROKEN_SHARE:.0%}){saved}; fix or remove them and resume:\n" + "\n".join(self.broken_lines())
        )

    def broken_state(self) -> list[list[str]]:
        """For the training state: a resumed run skips the same images as an uninterrupted one."""
        return [[str(self.items[i].image_path), reason] for i, reason in sorted(self.broken.items())]

    def restore_broken(self, entries) -> None:
        """Images the resumed run found broken stay skipped, unless they can be read again now (fixed
        by the user): then they are used, with a notice."""
        by_path = {str(item.image_path): index for index, item in enumerate(self.items)}
        for path, reason in entries or []:
            index = by_path.get(path)
            if index is None:
                continue
            try:
                if open_image(path).size == self.items[index].placement.original_size:
                    print(f"notice: {path} was unreadable earlier in this run and can be read again; training uses it")
                    continue
            except ImageSkipped:
                pass
            self.broken[index] = reason

    # --- caching ----------------------------------------------------------------------------
    def prepare(self, accelerator=None) -> None:
        """Fill the cache as configured; reuse fresh npz files (always, for metadata datasets).

        With several processes (`accelerator`) and cache_latents_to_disk, the work list is the union
        of what any process found stale (they may disagree: a cache can change between their checks),
        each process encodes and writes its share of it, and after a barrier every process reads them
        all. Every process takes the same branches, so none waits alone at the barrier.
        """
        args = self.args
        world = accelerator.num_processes if accelerator is not None else 1
        want_cache = args.cache_latents or args.cache_latents_to_disk
        if want_cache and self.augmenting:
            raise UserError("cache_latents cannot be combined with color_aug, random_crop or face_crop_aug_range "
                            "(they change the pixels every step); disable one")
        uses_metadata = any(item.subset.metadata_file for item in self.items)
        if not self.items or (not want_cache and not uses_metadata):
            return
        fingerprint_of_vae = vae_fingerprint(self.vae, self.vae_dtype_name)
        todo, reasons = [], Counter()
        for index, item in enumerate(tqdm(self.items, desc="checking latent caches", disable=len(self.items) < 50)):
            try:
                fingerprint = self._fingerprint(index, fingerprint_of_vae)
            except ImageBroken:
                continue
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
        if args.cache_latents_to_disk and world > 1:
            todo = self._shared_work(accelerator, todo, fingerprint_of_vae)
            # By item index, not list position: every process agrees on who owns an item.
            self._encode_and_store([entry for entry in todo if entry[0] % world == accelerator.process_index], to_disk=True)
            accelerator.wait_for_everyone()
            for index, _, path in todo:
                if path.exists():  # not when the image broke in the process that owns it
                    self._memory[index] = load_latent_cache(path)
                else:
                    self.broken.setdefault(index, "could not be read while caching latents")
        elif todo:
            self._encode_and_store(todo, to_disk=args.cache_latents_to_disk)
        if todo:
            cached = sum(1 for index, _, _ in todo if index in self._memory)
            unreadable = f"; {len(todo) - cached} could not be read" if cached < len(todo) else ""
            self.notices.append(f"cached latents of {cached} images ({_describe(reasons) or 'stale on another process'}); "
                                f"{len(self.items) - len(todo)} were fresh" + unreadable)
        if accelerator is not None:
            self.share_broken(accelerator)  # the stop decision below is taken by every process alike
        if self.too_many_broken():
            raise self.too_many_error()

    def _shared_work(self, accelerator, todo, fingerprint_of_vae) -> list:
        """The union of every process's stale caches, as (index, fingerprint, path) entries."""
        from library.training.parallel.distributed import union_over_processes

        mine = {entry[0]: entry for entry in todo}
        shared = []
        for index in union_over_processes(accelerator, list(mine)):
            if index in mine:
                shared.append(mine[index])
                continue
            item = self.items[index]
            try:
                fingerprint = self._fingerprint(index, fingerprint_of_vae)
            except ImageBroken:
                continue
            shared.append((index, fingerprint, latent_cache_path(item.image_path, item.placement.original_size)))
        return shared

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
                for index, fingerprint, path in chunk:
                    if index not in caches:  # broken image: recorded, left out
                        continue
                    self._memory[index] = caches[index]
                    if to_disk:
                        save_latent_cache(path, caches[index], fingerprint)
                progress.update(len(chunk))
        progress.close()

    def _load_crop(self, index: int, placement=None):
        if index in self.broken:
            raise ImageBroken(index, self.items[index].image_path, self.broken[index])
        try:
            return self.pixels.load_crop(index, placement)
        except PixelsUnreadable as error:
            self._break(index, error.reason)

    def _encode(self, indices: list[int]) -> dict[int, LatentCache]:
        """Caches of the readable images among `indices` (broken ones are recorded and left out)."""
        loaded = {}
        for index in indices:
            try:
                loaded[index] = self._load_crop(index)
            except ImageBroken:
                continue
        indices = list(loaded)
        if not indices:
            return {}
        images = [loaded[i][0] for i in indices]
        latents = encode_latents(self.vae, images, [seed_from_sha(self.sha(i)) for i in indices])
        flipped = None
        if self.flip_aug:
            mirrored = [image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for image in images]
            flipped = encode_latents(self.vae, mirrored, [seed_from_sha(self.sha(i), True) for i in indices])
        caches = {}
        for k, index in enumerate(indices):
            item = self.items[index]
            check_finite(latents[k], item.image_path, self.vae_dtype_name)
            caches[index] = LatentCache(latents[k], item.placement.original_size, item.placement.crop_ltrb,
                                        item.placement.resized_size, None if flipped is None else flipped[k], loaded[index][1])
        return caches

    # --- reading ----------------------------------------------------------------------------
    def get(self, index: int, flip: bool, rng: random.Random | None = None, prepared=None):
        """(latents [4, h, w] float32 unscaled, alpha mask [h, w] or None, crop_ltrb applied) of one
        sample; `rng` drives random_crop and color_aug (only possible without a latent cache);
        `prepared` is PixelPipeline.augmented's result for this sample when a loader worker made it."""
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
            if index in self.broken:
                raise ImageBroken(index, item.image_path, self.broken[index])
            if prepared is None:
                try:
                    prepared = self.pixels.augmented(index, flip, rng)
                except PixelsUnreadable as error:
                    prepared = error
            if isinstance(prepared, PixelsUnreadable):  # raised here, or returned by a loader worker
                self._break(index, prepared.reason)
            image, mask, crop, placement = prepared
            latents = encode_latents(self.vae, [image], [seed_from_sha(self.sha(index), flip)])[0]
            check_finite(latents, item.image_path, self.vae_dtype_name)
        if item.mask_path is not None:  # a mask file, placed like this sample's image
            mask = self._condition_mask(index, placement)
        if mask is not None and flip:
            mask = mask[:, ::-1].copy()
        mask = None if mask is None else torch.from_numpy(np.asarray(mask))
        return torch.from_numpy(np.asarray(latents, dtype=np.float32)), mask, tuple(crop)

    def _condition_mask(self, index: int, placement) -> np.ndarray:
        from library.training.inputs.condition_masks import MaskUnusable, load_mask

        item = self.items[index]
        try:
            if placement is not item.placement:  # random or face crop: a placement of this step only
                return load_mask(item.mask_path, placement)
            if index not in self._condition_masks:
                self._condition_masks[index] = load_mask(item.mask_path, placement)
        except MaskUnusable as error:  # broke after the start-up check: the image is left out like a broken one
            self._break(index, f"its mask {error}")
        return self._condition_masks[index]


def _describe(reasons: Counter) -> str:
    return ", ".join(f"{count} {reason}" for reason, count in reasons.most_common())
