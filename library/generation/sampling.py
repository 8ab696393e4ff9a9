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
    if settings.width % 8 or settings.height % 8:
        raise UserError(f"image size {settings.width}x{settings.height} must be a multiple of 8")
    unet, vae = model.unet, model.vae
    device, dtype = next(unet.parameters()).device, next(unet.parameters()).dtype
    context, pooled = encode_captions(model, [negative, prompt], settings.max_token_length)
    h, w = settings.height, settings.width
    ids = time_ids([(h, w)] * 2, [(0, 0)] * 2, [(h, w)] * 2).to(device, dtype)
    scheduler = make_scheduler(settings.sampler)
    scheduler.set_timesteps(settings.steps, device=device)
    generator = torch.Generator("cpu").manual_seed(seed)
    latents = torch.randn((1, 4, h // 8, w // 8), generator=generator, dtype=torch.float32)
    latents = (latents * scheduler.init_noise_sigma).to(device)
    context, pooled = context.to(device, dtype), pooled.to(device, dtype)
    for t in scheduler.timesteps:
        x = scheduler.scale_model_input(torch.cat([latents, latents]), t)
        noise = unet(x.to(dtype), t, encoder_hidden_states=context,
                     added_cond_kwargs={"text_embeds": pooled, "time_ids": ids}).sample.float()
        uncond, cond = noise.chunk(2)
        latents = scheduler.step(uncond + settings.guidance * (cond - uncond), t, latents,
                                 generator=generator).prev_sample
    vae_dtype = next(vae.parameters()).dtype
    image = vae.decode((latents / vae.config.scaling_factor).to(vae_dtype)).sample.float()
    pixels = ((image[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(np.ascontiguousarray(pixels))
