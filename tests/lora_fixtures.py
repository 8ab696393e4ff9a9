"""Helpers shared by the LoRA tests: fixed inputs for the tiny model and non-trivial LoRA weights."""
from __future__ import annotations

import torch

from library.models.tiny_sdxl import TE1_WIDTH, TE2_WIDTH


@torch.no_grad()
def randomise_network(network, seed: int = 0, std: float = 0.1) -> None:
    """Give every LoRA module random non-zero down and up weights (up starts at zero otherwise)."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in sorted(network.named_parameters()):
        param.copy_(torch.randn(param.shape, generator=generator) * std)


def unet_inputs(seed: int = 0, batch: int = 1, size: int = 16) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {
        "sample": torch.randn(batch, 4, size, size, generator=generator),
        "timestep": torch.tensor([500] * batch),
        "encoder_hidden_states": torch.randn(batch, 77, TE1_WIDTH + TE2_WIDTH, generator=generator),
        "added_cond_kwargs": {
            "text_embeds": torch.randn(batch, TE2_WIDTH, generator=generator),
            "time_ids": torch.tensor([[128.0, 128.0, 0.0, 0.0, 128.0, 128.0]] * batch),
        },
    }


def token_ids(seed: int = 0, batch: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 49406, (batch, 77), generator=generator)
    ids[:, 0] = 49406
    ids[:, 20:] = 49407
    return ids


@torch.no_grad()
def unet_out(unet, inputs: dict) -> torch.Tensor:
    return unet(**inputs).sample


@torch.no_grad()
def te_out(text_encoder, ids: torch.Tensor) -> torch.Tensor:
    """Penultimate hidden state (what SDXL conditions on) and the final one, concatenated."""
    out = text_encoder(ids, output_hidden_states=True)
    return torch.cat([out.hidden_states[-2], out.hidden_states[-1]], dim=-1)


def quiet_lycoris_logging() -> None:
    """LyCORIS logs to the sys.stdout of import time, which pytest closes after that test; point its
    handler at the real stderr and show warnings only, so later tests do not print logging errors."""
    import logging
    import sys

    from lycoris.logging import logger

    for handler in logger.handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(sys.__stderr__)
    logger.setLevel(logging.WARNING)
