"""The one SDXL sampling stack: prompt -> image with classifier-free guidance and a diffusers scheduler.

Used by the samples taken while training (library/training/sampling.py, LoRA active, under the
training's autocast), by tools/sdxl_gen_img.py and by the toy world's evaluation, so a prompt, a
seed and a sampler give the same image in all three.
- Samplers: kohya's names (and their k_ aliases) mapped onto diffusers schedulers with SDXL's noise
  schedule; v-prediction models sample with prediction_type "v_prediction".
- Prompts are encoded with library.models.sdxl_conditioning: longer than 75 tokens with
  max_token_length 150/225, A1111 emphasis such as (word:1.2) when `weighted`.
- Time ids are (h, w), crop (0, 0), target (h, w). Each seed's initial and ancestral noise comes
  from its own CPU generator, so a seed gives the same image on every device, alone or in a batch;
  the global torch RNG is left as it was (training's random state is not disturbed).
"""
from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from library.errors import UserError
from library.models.sdxl_architecture import SDXL_SCHEDULER_CONFIG
from library.models.sdxl_conditioning import encode_captions, time_ids

SAMPLERS = {
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpm_2": ("KDPM2DiscreteScheduler", {}),
    "dpm_2_a": ("KDPM2AncestralDiscreteScheduler", {}),
    # (diffusers refuses its default final sigma 0 for first-order dpmsolver; kohya's older diffusers ended at sigma_min)
    "dpmsolver": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"}),
    "dpmsolver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "dpmsingle": ("DPMSolverSinglestepScheduler", {}),
}
_WEIGHT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclass
class Settings:
    width: int = 1024
    height: int = 1024
    steps: int = 30
    guidance: float = 7.0
    sampler: str = "euler_a"
    max_token_length: int | None = None
    v_parameterization: bool = False
    weighted: bool = True  # (word:1.2) read as A1111 reads it


def make_scheduler(name: str, v_parameterization: bool = False):
    key = name.lower().removeprefix("k_")
    if key not in SAMPLERS:
        raise UserError(f"sampler {name!r} is unknown; use one of {', '.join(SAMPLERS)} (k_ aliases too)")
    import diffusers

    class_name, extra = SAMPLERS[key]
    config = {**SDXL_SCHEDULER_CONFIG, **extra, "prediction_type": "v_prediction" if v_parameterization else "epsilon"}
    return getattr(diffusers, class_name).from_config(config)


def generate(model, prompt: str, negative: str, seed: int, settings: Settings, autocast=contextlib.nullcontext) -> Image.Image:
    return generate_batch(model, prompt, negative, [seed], settings, autocast)[0]


@torch.no_grad()
def generate_batch(model, prompt: str, negative: str, seeds: list[int], settings: Settings,
                   autocast=contextlib.nullcontext) -> list[Image.Image]:
    """One image per seed, denoised together in one batch. `autocast` is the context the text
    encoders and the UNet run in (the training's: half base weights with fp32 LoRA weights)."""
    if settings.width % 8 or settings.height % 8:
        raise UserError(f"image size {settings.width}x{settings.height} must be a multiple of 8")
    rng_state = torch.get_rng_state()
    try:
        with autocast():
            latents = _denoise(model, prompt, negative, seeds, settings)
        return decode_latents(model.vae, latents)
    finally:
        torch.set_rng_state(rng_state)


def _denoise(model, prompt: str, negative: str, seeds: list[int], settings: Settings) -> torch.Tensor:
    unet = model.unet
    device, weight_dtype = next(unet.parameters()).device, next(unet.parameters()).dtype
    count, h, w = len(seeds), settings.height, settings.width
    context, pooled = encode_captions(model, [negative, prompt], settings.max_token_length, settings.weighted)
    # the UNet's input dtype: its weights' (an fp16 model), or the encoders' output under autocast (fp8 weights)
    dtype = weight_dtype if weight_dtype in _WEIGHT_DTYPES else context.dtype
    context = context.repeat_interleave(count, 0).to(device, dtype)  # [uncond x n, cond x n]
    pooled = pooled.repeat_interleave(count, 0).to(device, dtype)
    ids = time_ids([(h, w)] * 2 * count, [(0, 0)] * 2 * count, [(h, w)] * 2 * count).to(device, dtype)
    scheduler = make_scheduler(settings.sampler, settings.v_parameterization)
    scheduler.set_timesteps(settings.steps, device=device)
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
    latents = torch.cat([torch.randn((1, 4, h // 8, w // 8), generator=g, dtype=torch.float32) for g in generators])
    latents = (latents * scheduler.init_noise_sigma).to(device)
    # ancestral and SDE samplers draw noise at each step (from the seeds' generators); the others take no generator
    stochastic = "generator" in inspect.signature(scheduler.step).parameters
    step_kwargs = {"generator": generators if count > 1 else generators[0]} if stochastic else {}
    for t in scheduler.timesteps:
        x = scheduler.scale_model_input(torch.cat([latents, latents]), t)
        prediction = unet(x.to(dtype), t, encoder_hidden_states=context,
                          added_cond_kwargs={"text_embeds": pooled, "time_ids": ids}).sample.float()
        uncond, cond = prediction.chunk(2)
        latents = scheduler.step(uncond + settings.guidance * (cond - uncond), t, latents, **step_kwargs).prev_sample
    return latents


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor) -> list[Image.Image]:
    """VAE-decode in the VAE's own dtype, outside autocast (fp32 with no_half_vae: the SDXL VAE
    overflows when its convolutions run in fp16). An fp16 VAE whose config asks for it
    (force_upcast) decodes in fp32 and goes back to fp16, as diffusers' pipeline does."""
    dtype = next(vae.parameters()).dtype
    upcast = dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    with torch.autocast(latents.device.type, enabled=False):
        if upcast:
            vae.to(dtype=torch.float32)
        try:
            decoder_dtype = next(vae.post_quant_conv.parameters()).dtype if vae.post_quant_conv is not None else torch.float32
            images = vae.decode((latents / vae.config.scaling_factor).to(decoder_dtype)).sample.float()
        finally:
            if upcast:
                vae.to(dtype=dtype)
    pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(p)) for p in pixels]
