"""Fixed-noise validation loss: the same timesteps and the same noise at every evaluation, so the
curve measures the model, not the sampling luck of the moment."""
from __future__ import annotations

import torch

from library.training.noise import make_noise_scheduler

DEFAULT_TIMESTEPS = (200, 400, 600, 800)


@torch.no_grad()
def fixed_noise_loss(unet, latents: list[torch.Tensor], contexts, pooleds, time_ids, seed: int = 0,
                     timesteps=DEFAULT_TIMESTEPS, v_parameterization: bool = False) -> float:
    """Mean MSE over every (sample, timestep) pair; latents are scaled, one [4, h, w] per sample."""
    scheduler = make_noise_scheduler(v_parameterization=v_parameterization)
    device = next(unet.parameters()).device
    total, count = 0.0, 0
    for index, latent in enumerate(latents):
        generator = torch.Generator().manual_seed(seed * 100_003 + index)
        latent = latent[None].to(device)
        for timestep in timesteps:
            noise = torch.randn(latent.shape, generator=generator).to(device)
            t = torch.tensor([timestep], device=device)
            noisy = scheduler.add_noise(latent, noise, t)
            prediction = unet(noisy, t, contexts[index : index + 1].to(device),
                              added_cond_kwargs={"text_embeds": pooleds[index : index + 1].to(device),
                                                 "time_ids": time_ids[index : index + 1].to(device)}).sample
            target = scheduler.get_velocity(latent, noise, t) if v_parameterization else noise
            total += torch.nn.functional.mse_loss(prediction.float(), target.float()).item()
            count += 1
    return total / count
