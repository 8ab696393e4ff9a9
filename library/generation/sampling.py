"""The SDXL denoising loop: prompt -> image, with classifier-free guidance and a diffusers scheduler.

Prompts are encoded with library.models.sdxl_conditioning (so prompts longer than 75 tokens work
with max_token_length 150/225, as in training); time ids are (h, w), crop (0, 0), target (h, w).
The initial noise comes from a CPU generator seeded with `seed`, so a seed gives the same image on
every device and run.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from library.errors import UserError
from library.models.sdxl_architecture import SDXL_SCHEDULER_CONFIG
from library.models.sdxl_conditioning import encode_captions, time_ids

SAMPLERS = {
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "ddim": "DDIMScheduler",
    "dpmsolver++": "DPMSolverMultistepScheduler",
}


@dataclass
class Settings:
    width: int = 1024
    height: int = 1024
    steps: int = 30
    guidance: float = 7.0
    sampler: str = "euler_a"
    max_token_length: int | None = None


def make_scheduler(name: str):
    import diffusers

    if name not in SAMPLERS:
        raise UserError(f"sampler '{name}' is not one of {', '.join(SAMPLERS)}")
    return getattr(diffusers, SAMPLERS[name]).from_config(SDXL_SCHEDULER_CONFIG)


@torch.no_grad()
def generate(model, prompt: str, negative: str, seed: int, settings: Settings) -> Image.Image:
    return generate_batch(model, prompt, negative, [seed], settings)[0]


@torch.no_grad()
def generate_batch(model, prompt: str, negative: str, seeds: list[int], settings: Settings) -> list[Image.Image]:
    """One image per seed, denoised together in one batch. Each seed's initial and ancestral noise
    comes from its own generator, so every image is the one `generate` gives for that seed."""
    if settings.width % 8 or settings.height % 8:
        raise UserError(f"image size {settings.width}x{settings.height} must be a multiple of 8")
    unet, vae = model.unet, model.vae
    device, dtype = next(unet.parameters()).device, next(unet.parameters()).dtype
    count = len(seeds)
    context, pooled = encode_captions(model, [negative, prompt], settings.max_token_length)
    context, pooled = context.repeat_interleave(count, 0), pooled.repeat_interleave(count, 0)  # [uncond x n, cond x n]
    h, w = settings.height, settings.width
    ids = time_ids([(h, w)] * 2 * count, [(0, 0)] * 2 * count, [(h, w)] * 2 * count).to(device, dtype)
    scheduler = make_scheduler(settings.sampler)
    scheduler.set_timesteps(settings.steps, device=device)
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
    latents = torch.cat([torch.randn((1, 4, h // 8, w // 8), generator=g, dtype=torch.float32) for g in generators])
    latents = (latents * scheduler.init_noise_sigma).to(device)
    context, pooled = context.to(device, dtype), pooled.to(device, dtype)
    for t in scheduler.timesteps:
        x = scheduler.scale_model_input(torch.cat([latents, latents]), t)
        noise = unet(x.to(dtype), t, encoder_hidden_states=context,
                     added_cond_kwargs={"text_embeds": pooled, "time_ids": ids}).sample.float()
        uncond, cond = noise.chunk(2)
        latents = scheduler.step(uncond + settings.guidance * (cond - uncond), t, latents,
                                 generator=generators if count > 1 else generators[0]).prev_sample
    vae_dtype = next(vae.parameters()).dtype
    images = vae.decode((latents / vae.config.scaling_factor).to(vae_dtype)).sample.float()
    pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(p)) for p in pixels]
