"""Validation loss as kohya's train_network.py computes it, through the training loss path.

kohya evaluates every validation batch (up to `max_validation_steps` batches) at four fixed
timesteps spread evenly over [min_timestep, max_timestep] (200, 400, 600, 800 by default), with
the same noise, loss type, huber schedule, min-SNR / debiased weights, masks, prior weights and
differential output preservation as a training step, the network in eval mode and no gradients;
the logged value is the mean over (batch, timestep) of each batch's loss.

What kohya leaves to its global random generator (reseeded with validation_seed at each
evaluation) is fixed here per image: the noise of each (image, timestep), the flip, and the
caption's random choices (dropout, shuffle, wildcard line), so every evaluation scores the same
problems and the curve measures the model. Captions go through the training caption processing
at epoch 0 with the token warm-up complete (kohya's validation dataset never advances its epoch).
"""
from __future__ import annotations

import hashlib
import random
from collections import defaultdict

import torch

from library.models.sdxl_conditioning import encode_captions
from library.training.objective import noise as noise_lib
from library.data.caption_processing import process_caption
from library.training.inputs.latent_source import ImageBroken

NUM_VALIDATION_TIMESTEPS = 4  # kohya's constant


def validation_timesteps(min_timestep: int | None, max_timestep: int | None,
                         num_train_timesteps: int = noise_lib.SDXL_NUM_TIMESTEPS) -> list[int]:
    """The inner points of an even split of [min, max] into NUM + 1 intervals, truncated to whole
    timesteps (kohya: np.linspace(min, max, NUM + 2, dtype=int)[1:-1])."""
    low = 0 if min_timestep is None else min_timestep
    high = num_train_timesteps if max_timestep is None else max_timestep
    intervals = NUM_VALIDATION_TIMESTEPS + 1
    # integer arithmetic: the exact floor of low + k * (high - low) / intervals
    return [low + (k * (high - low)) // intervals for k in range(1, intervals)]


def validation_batches(items, batch_sizes: list[int], seed: int, limit: int | None) -> list[list[int]]:
    """Batches of validation item indices: one bucket (and dataset) per batch at that dataset's
    batch size, each image once (kohya validates without repeats), in a seeded order; the first
    `limit` batches (kohya's max_validation_steps counts batches)."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for index, item in enumerate(items):
        groups[(item.dataset_index, item.bucket)].append(index)
    batches = []
    for key in sorted(groups):
        members, size = groups[key], batch_sizes[key[0]]
        batches.extend(members[start : start + size] for start in range(0, len(members), size))
    random.Random(f"{seed}-validation").shuffle(batches)
    return batches if limit is None else batches[:limit]


def item_seed(seed: int, index: int) -> int:
    """The fixed seed of validation image `index`: its flip and caption choices."""
    digest = hashlib.blake2b(f"validation/{seed}/{index}".encode(), digest_size=6).digest()
    return int.from_bytes(digest, "little")


def fixed_noise(trainer, latents: torch.Tensor, seeds: list[int], timestep: int):
    """(noise, timesteps, noisy latents) of one batch at one timestep; each image's noise (with the
    configured noise offset, multires noise and input perturbation) from its own generator."""
    options = trainer.objective.noise_options
    noises, noisy = [], []
    timesteps = torch.full((latents.shape[0],), timestep, dtype=torch.long)
    for row, seed in enumerate(seeds):
        generator = torch.Generator().manual_seed(seed * 1009 + timestep)
        sample = latents[row : row + 1]
        noise = noise_lib.training_noise(sample, options, generator)  # drawn on the CPU, returned on the device
        noisy.append(noise_lib.noisy_latents(trainer.noise_scheduler, sample, noise, timesteps[row : row + 1], options, generator))
        noises.append(noise)
    return torch.cat(noises), timesteps.to(latents.device), torch.cat(noisy)


def batch_losses(trainer, indices: list[int], seeds: list[int], timesteps: list[int]) -> list[float]:
    """The loss of one validation batch at each of `timesteps` (the training loss function)."""
    objective, items = trainer.objective, trainer.val_items
    latents, mask, ids, weights = objective.inputs(indices, seeds, items=items, source=trainer.val_latents)
    captions = [trainer.pivotal.replace_in_prompt(
        process_caption(items[i].caption, items[i].subset, random.Random(seed), 0, trainer.max_steps, trainer.max_steps))
        for i, seed in zip(indices, seeds)]
    multiplier = trainer.multipliers[items[indices[0]].dataset_index] if trainer.multipliers else 1.0
    losses = []
    trainer.network.set_multiplier(multiplier)
    try:
        with trainer.placement.autocast():
            context, pooled = encode_captions(trainer.model, captions, trainer.args.max_token_length, trainer.args.weighted_captions)
            for timestep in timesteps:
                noise, t, noisy = fixed_noise(trainer, latents, seeds, timestep)

                def predict(part=slice(None)):
                    return objective.unet(noisy[part], t[part], context[part], pooled[part], ids[part])

                loss = objective.loss(predict(), predict, items, indices, multiplier, latents, noise, t, t.cpu(), weights, mask)
                losses.append(loss.item())
    finally:
        trainer.network.set_multiplier(1.0)
    return losses


@torch.no_grad()
def validation_loss(trainer) -> float | None:
    """kohya's loss/validation/*_average for the trainer's validation images, or None when there
    are none (or every one of them is broken). The network and a schedule-free optimizer are in
    eval mode meanwhile."""
    args = trainer.args
    if not trainer.val_items:
        return None
    seed = args.validation_seed if args.validation_seed is not None else trainer.seed
    timesteps = validation_timesteps(args.min_timestep, args.max_timestep)
    batches = validation_batches(trainer.val_items, trainer.summary["batch_sizes"], seed, args.max_validation_steps)
    losses: list[float] = []
    trainer.network.eval()
    trainer.schedule_free.eval()  # schedule-free: validate the averaged weights
    try:
        for indices in batches:
            seeds = [item_seed(seed, index) for index in indices]
            while indices:
                indices, seeds = trainer.val_latents.usable(indices, seeds)  # a broken image leaves the batch
                if not indices:
                    break
                try:
                    losses.extend(batch_losses(trainer, indices, seeds, timesteps))
                    break
                except ImageBroken:
                    continue
    finally:
        trainer.schedule_free.train()
        trainer.network.train()
    return sum(losses) / len(losses) if losses else None
