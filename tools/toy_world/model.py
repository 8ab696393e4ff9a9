"""The toy world's model: the tiny SDXL architecture with a wider first UNet level.

Everything else (text encoders, VAE, block layout, depths, conditioning) is the tiny model of
library/models/tiny_sdxl.py. The one change: the first UNet level has 64 channels instead of 32.
Every norm in the SDXL UNet is a GroupNorm with 32 groups; at 32 channels that is one channel per
group, which removes each channel's mean. Then the resnets of that level cannot see the timestep or
the pooled caption (both arrive as per-channel offsets), and the last norm before the output strips
each channel's mean, so the prediction's mean colour cannot follow the caption. With two channels
per group the offsets survive as differences within a group: measured on this world, the UNet
draws each caption's colour after ~150 steps, where the 32-channel UNet still mixes colours after 800.
The loaders read the widths from the weights, so the model loads like any SDXL checkpoint.
"""
from __future__ import annotations

import torch

from library.models.tiny_sdxl import TINY_UNET_CONFIG, build_tiny_components

TOY_UNET_CONFIG = {**TINY_UNET_CONFIG, "block_out_channels": [64, 64, 128]}


def toy_components(seed: int):
    """(unet, text_encoder1, text_encoder2, vae) with seeded random weights; the text encoders are
    the tiny model's (random and frozen: captions only need to differ, not to mean anything)."""
    from diffusers import UNet2DConditionModel

    _, text_encoder1, text_encoder2, vae = build_tiny_components(seed)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**TOY_UNET_CONFIG).eval()
    return unet, text_encoder1, text_encoder2, vae
