"""Build SDXL components from configs without allocating random weights.

Parameters are created on the meta device (accelerate's init_empty_weights keeps buffers such as
CLIP's position_ids real) and then receive the checkpoint tensors with load_state_dict(assign=True),
so loading a 2.6 B-parameter UNet costs no initialisation time.
"""
from __future__ import annotations

import torch

from library.errors import UserError


def empty_unet(config: dict):
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    with init_empty_weights():
        return UNet2DConditionModel(**config)


def empty_vae(config: dict):
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL

    with init_empty_weights():
        return AutoencoderKL(**config)


def empty_text_encoder(config: dict, with_projection: bool):
    from accelerate import init_empty_weights
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    with init_empty_weights():
        return cls(CLIPTextConfig(**config))


def assign_weights(model: torch.nn.Module, state_dict: dict, what: str, source) -> torch.nn.Module:
    """Load `state_dict` into an empty model; any missing or unexpected key is a clear error."""
    expected = set(model.state_dict().keys())
    missing = sorted(expected - state_dict.keys())
    unexpected = sorted(state_dict.keys() - expected)
    if missing or unexpected:
        detail = []
        if missing:
            detail.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        raise UserError(f"{source}: {what} weights do not match an SDXL {what}: {'; '.join(detail)}")
    try:
        model.load_state_dict(state_dict, strict=True, assign=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()
        raise UserError(f"{source}: {what} weights have unexpected shapes ({first[-1].strip() if first else error})") from None
    return model.eval()
