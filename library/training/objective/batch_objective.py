"""One batch's training loss: inputs (latents, masks, time ids, prior weights), text conditioning,
noise and timesteps drawn per image, the UNet's prediction through DDP, the target (with
differential output preservation) and the configured loss.

Everything it uses is handed to it once the run is set up (library/training/run_setup.py); the
loop (library/training/loop.py) calls `batch_loss` and `zero_loss`, validation calls `inputs`.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from library.data.caption_processing import process_caption
from library.models.sdxl_architecture import VAE_SCALE_FACTOR_SDXL
from library.models.sdxl_conditioning import encode_captions, time_ids
from library.training.inputs.dataset_attributes import preservation_rows, preserved_target
from library.training.inputs.latent_source import ImageBroken
from library.training.inputs.pixel_loading import sample_randomness
from library.training.objective import loss as loss_lib
from library.training.objective import noise as noise_lib
from library.training.parallel import data_parallel


@dataclass
class BatchObjective:
    args: object  # the resolved options (noise, timestep, loss, caption and prior settings)
    model: object  # SDXLParts
    device: torch.device
    items: list  # training items; indices below are into this list
    latents: object  # LatentSource of the training items
    te_cache: object | None  # TextEncoderCache when text-encoder outputs are cached
    pivotal: object  # pivotal tuning (a no-op object when off)
    noise_scheduler: object
    placement: object  # autocast context of the run's precision
    accelerator: object
    ddp: object  # data_parallel.TrainableWeights
    network: object
    multipliers: list | None  # per-dataset network_multiplier, None when all 1.0
    trainable: list  # every trained tensor
    max_steps: int
    text_grad: bool  # the text encoders (LoRA or pivotal rows) are trained: encode with gradients

    def __post_init__(self):
        self.noise_options = noise_lib.NoiseOptions.from_args(self.args)
        self.loss_options = loss_lib.LossOptions.from_args(self.args)

    def conditioning(self, indices, seeds, epoch, step):
        """(context, pooled): cached, or the captions processed with each image's seed and encoded."""
        if self.te_cache is not None:
            context, pooled = self.te_cache.get(indices)
            return context.to(self.device), pooled.to(self.device)
        captions = [process_caption(self.items[i].caption, self.items[i].subset, random.Random(seed), epoch, step, self.max_steps)
                    for i, seed in zip(indices, seeds)]
        captions = self.pivotal.prepare_captions(captions, step, self.max_steps)  # pivotal: TOK -> <s0><s1>; pivot
        with torch.set_grad_enabled(self.text_grad):
            return encode_captions(self.model, captions, self.args.max_token_length, self.args.weighted_captions)

    def inputs(self, indices, seeds, pixels=None, items=None, source=None):
        """(scaled latents, loss mask, time ids, prior weights) of a batch. `pixels`: {(index, seed):
        images} prepared by loader workers, or None. `items` / `source`: another item list and its
        LatentSource (validation); the training ones by default."""
        items, source = items or self.items, source or self.latents
        latents, masks, originals, crops, targets = [], [], [], [], []
        for index, seed in zip(indices, seeds):
            item = items[index]
            flip, augment = sample_randomness(item, seed)
            sample, mask, crop = source.get(index, flip, augment, (pixels or {}).get((index, seed)))
            latents.append(sample)
            masks.append(mask)
            w, h = item.placement.original_size
            originals.append((h, w))
            crops.append((crop[1], crop[0]))
            targets.append((item.placement.bucket[1], item.placement.bucket[0]))
        latents = torch.stack(latents).to(self.device) * VAE_SCALE_FACTOR_SDXL
        mask = None
        if any(m is not None for m in masks):
            mask = torch.stack([m if m is not None else torch.ones(latents.shape[2] * 8, latents.shape[3] * 8) for m in masks])
            mask = torch.nn.functional.interpolate(mask[:, None].float(), size=latents.shape[2:], mode="area").to(self.device)
        ids = time_ids(originals, crops, targets).to(self.device)
        weights = torch.tensor([self.args.prior_loss_weight if items[i].is_reg else 1.0 for i in indices])
        return latents, mask, ids, weights

    def noise(self, latents, seeds):
        """(noise, timesteps on the CPU, noisy latents), each image's drawn from its own generator."""
        noises, timesteps, noisy = [], [], []
        for row, seed in enumerate(seeds):
            generator = torch.Generator().manual_seed(seed)
            sample = latents[row : row + 1]
            noise = noise_lib.training_noise(sample, self.noise_options, generator)  # drawn on the CPU, returned on the device
            timestep = noise_lib.sample_timesteps(1, self.args.min_timestep, self.args.max_timestep, generator)
            noisy.append(noise_lib.noisy_latents(self.noise_scheduler, sample, noise, timestep, self.noise_options, generator))
            noises.append(noise)
            timesteps.append(timestep)
        return torch.cat(noises), torch.cat(timesteps), torch.cat(noisy)

    def predict(self, indices, seeds, epoch, step, latents, ids):
        """The forward pass that uses the trained weights, run by DDP (data_parallel.TrainableWeights):
        (prediction, noise, timesteps, noisy latents, context, pooled, the timesteps on the CPU)."""
        context, pooled = self.conditioning(indices, seeds, epoch, step)
        noise, cpu_timesteps, noisy = self.noise(latents, seeds)  # (drawn on the CPU: the loss weights read them there)
        timesteps = cpu_timesteps.to(self.device)
        prediction = self.unet(noisy, timesteps, context, pooled, ids)
        if self.multipliers and self.accelerator.num_processes > 1:  # a dataset at network_multiplier 0 uses no trained tensor:
            prediction = prediction + 0.0 * torch.stack([p.sum() for p in self.trainable]).sum()  # zeros, so DDP's backward still runs
        return prediction, noise, timesteps, noisy, context, pooled, cpu_timesteps

    def unet(self, noisy, timesteps, context, pooled, ids):
        return self.model.unet(noisy, timesteps, context, added_cond_kwargs={"text_embeds": pooled, "time_ids": ids}).sample

    def batch_loss(self, indices, seeds, epoch, step, sync: bool = True, pixels=None):
        """The batch's loss, or None when every image in it is broken (see LatentSource.usable).
        `sync` False (inside an accumulation group) skips DDP's gradient all-reduce; `pixels` are
        the batch's images prepared by loader workers."""
        while True:
            indices, seeds = self.latents.usable(indices, seeds)  # a broken image leaves the batch, the rest stay as they were
            if not indices:
                return None
            try:
                latents, mask, ids, sample_weights = self.inputs(indices, seeds, pixels)
                break
            except ImageBroken:
                continue
        multiplier = self.multipliers[self.items[indices[0]].dataset_index] if self.multipliers else 1.0
        if self.multipliers:  # a batch never mixes datasets
            self.network.set_multiplier(multiplier)
        try:
            with self.placement.autocast():
                with data_parallel.gradient_sync(self.accelerator, self.ddp, sync):
                    prediction, noise, timesteps, noisy, context, pooled, cpu_timesteps = self.ddp(
                        self.predict, indices, seeds, epoch, step, latents, ids)

                def predict(rows=slice(None)):  # the prior of diff_output_preservation (the LoRA off)
                    return self.unet(noisy[rows], timesteps[rows], context[rows], pooled[rows], ids[rows])

                return self.loss(prediction, predict, self.items, indices, multiplier, latents, noise, timesteps, cpu_timesteps,
                                 sample_weights, mask)
        finally:
            if self.multipliers:
                self.network.set_multiplier(1.0)  # samples and validation use the LoRA at full strength

    def loss(self, prediction, predict, items, indices, multiplier, latents, noise, timesteps, cpu_timesteps, weights, mask):
        """The configured loss of `prediction` against its target; `predict(rows)` gives the UNet's
        prediction of those rows again (the prior of diff_output_preservation, taken with the LoRA off)."""
        target = noise_lib.prediction_target(self.noise_scheduler, latents, noise, timesteps, self.args.v_parameterization)
        rows = preservation_rows(items, indices)  # custom_attributes diff_output_preservation
        if rows:
            target = preserved_target(self.network, multiplier, target, rows, predict)
        return loss_lib.training_loss(self.loss_options, self.noise_scheduler, prediction, target, cpu_timesteps, weights, mask)

    def zero_loss(self, sync: bool):
        """0 x every trained tensor, through DDP like a real batch, so its gradients (zeros) are all-reduced."""
        with data_parallel.gradient_sync(self.accelerator, self.ddp, sync):
            return self.ddp(lambda: torch.stack([p.sum() for p in self.trainable]).sum() * 0.0)
