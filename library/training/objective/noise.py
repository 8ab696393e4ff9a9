"""Diffusion noise for training: the SDXL DDPM schedule, timestep sampling and noise variants.

All randomness flows through one CPU torch.Generator, so a run with a seed draws the same numbers on
any device; the draws then move to the latents' device, where the arithmetic happens.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

SDXL_NUM_TIMESTEPS = 1000


def make_noise_scheduler(zero_terminal_snr: bool = False, v_parameterization: bool = False):
    """DDPM, scaled_linear betas 0.00085-0.012 over 1000 steps: the schedule SDXL was trained with."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=SDXL_NUM_TIMESTEPS,
        clip_sample=False,
        prediction_type="v_prediction" if v_parameterization else "epsilon",
        rescale_betas_zero_snr=zero_terminal_snr,
    )


def snr(noise_scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio alpha_bar / (1 - alpha_bar) at each timestep."""
    alphas_cumprod = noise_scheduler.alphas_cumprod.to(timesteps.device)[timesteps]
    return alphas_cumprod / (1.0 - alphas_cumprod)


def sample_timesteps(batch: int, min_timestep: int | None, max_timestep: int | None, generator) -> torch.Tensor:
    """Uniform in [min, max); min == max is kohya's fixed timestep (no random draw)."""
    low = 0 if min_timestep is None else min_timestep
    high = SDXL_NUM_TIMESTEPS if max_timestep is None else max_timestep
    if low >= high:
        return torch.full((batch,), high, dtype=torch.long)
    return torch.randint(low, high, (batch,), generator=generator, dtype=torch.long)


def pyramid_noise(noise: torch.Tensor, iterations: int, discount: float, generator) -> torch.Tensor:
    """Multi-resolution noise as kohya's pyramid_noise_like: levels i = 0..N-1, each a random field
    at 1/r**i of the size (r uniform in [2, 4) per level; i = 0 is a second full-resolution field)
    upsampled and added with weight discount**i, stopping after a 1-pixel level; then the sum is
    divided by its standard deviation (over the whole tensor given)."""
    batch, channels, height, width = noise.shape
    for level in range(iterations):
        ratio = torch.rand((), generator=generator).item() * 2 + 2
        h, w = max(1, int(height / ratio**level)), max(1, int(width / ratio**level))
        coarse = torch.randn(batch, channels, h, w, generator=generator, dtype=noise.dtype).to(noise.device)
        noise = noise + F.interpolate(coarse, size=(height, width), mode="bilinear") * discount**level
        if h == 1 or w == 1:
            break
    return noise / noise.std()


@dataclass(frozen=True)
class NoiseOptions:
    """The options that shape the training noise and the noisy input (kohya's names and defaults)."""

    noise_offset: float | None = None
    noise_offset_random_strength: bool = False
    adaptive_noise_scale: float | None = None
    multires_noise_iterations: int | None = None
    multires_noise_discount: float = 0.3
    ip_noise_gamma: float | None = None
    ip_noise_gamma_random_strength: bool = False

    @classmethod
    def from_args(cls, args) -> "NoiseOptions":
        return cls(**{field.name: getattr(args, field.name) for field in fields(cls)})


def training_noise(latents: torch.Tensor, options: "NoiseOptions", generator) -> torch.Tensor:
    """Gaussian noise with the configured variants, in kohya's order: noise offset (with random
    strength / adaptive scale) first, then multi-resolution noise on top of it (both may be on).
    Drawn on the CPU from `generator`, returned on the latents' device."""
    device = latents.device

    def normal(shape) -> torch.Tensor:
        return torch.randn(shape, generator=generator, dtype=latents.dtype).to(device)

    noise = normal(latents.shape)
    batch, channels = latents.shape[:2]
    if options.noise_offset:
        offset = torch.full((batch, 1, 1, 1), float(options.noise_offset), dtype=latents.dtype)
        if options.noise_offset_random_strength:
            offset = offset * torch.rand((batch, 1, 1, 1), generator=generator, dtype=latents.dtype)
        offset = offset.to(device)
        if options.adaptive_noise_scale:
            mean = latents.mean(dim=(2, 3), keepdim=True)
            offset = torch.clamp(offset + options.adaptive_noise_scale * mean.abs(), min=0.0)
        noise = noise + offset * normal((batch, channels, 1, 1))
    if options.multires_noise_iterations:
        noise = pyramid_noise(noise, options.multires_noise_iterations, options.multires_noise_discount, generator)
    return noise


def noisy_latents(noise_scheduler, latents, noise, timesteps, options: "NoiseOptions", generator) -> torch.Tensor:
    """Forward-diffuse; input perturbation (ip_noise_gamma) perturbs the input noise, not the target.
    The perturbation is drawn on the CPU from `generator` like the noise, then moved to the device."""
    if options.ip_noise_gamma:
        gamma = torch.full((latents.shape[0], 1, 1, 1), float(options.ip_noise_gamma), dtype=latents.dtype)
        if options.ip_noise_gamma_random_strength:
            gamma = gamma * torch.rand(gamma.shape, generator=generator, dtype=latents.dtype)
        perturbation = gamma * torch.randn(latents.shape, generator=generator, dtype=latents.dtype)
        noise = noise + perturbation.to(noise.device)
    return noise_scheduler.add_noise(latents, noise.to(latents.device), timesteps.to(latents.device))


def prediction_target(noise_scheduler, latents, noise, timesteps, v_parameterization: bool) -> torch.Tensor:
    if v_parameterization:
        return noise_scheduler.get_velocity(latents, noise, timesteps)
    return noise
