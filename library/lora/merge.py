"""Merging LoRA files into a loaded SDXL model's weights, in place.

Used for `base_weights` / `base_weights_multiplier` (other LoRAs baked into the base before
training) and by tools. Any format library.lora.weights_math applies works here (LoRA, LoCon,
LoHa, LoKr, Tucker, DoRA, full diffs), whatever naming style the file uses.
"""
from __future__ import annotations

import torch

from library.errors import UserError
from library.lora import weights_math
from library.lora.file_io import load_lora_for_model
from library.lora.naming import ModelNames, group_by_module


@torch.no_grad()
def merge_lora_into_model(weights, unet, text_encoders, multiplier: float = 1.0, source: str | None = None) -> int:
    """Apply every key group of `weights` (a path or a state dict) at `multiplier`; returns the count."""
    names = ModelNames(unet, text_encoders)
    source = source or (str(weights) if not isinstance(weights, dict) else "LoRA")
    state_dict, _ = load_lora_for_model(weights, names)
    groups = group_by_module(state_dict)
    for name, group in groups.items():
        module = names.ref(name).module
        try:
            new_weight = weights_math.apply_group(module.weight.data, group, multiplier)
        except weights_math.UnsupportedGroupError as error:
            raise UserError(f"{source}: module {name} cannot be merged: {error}") from None
        module.weight.data.copy_(new_weight)
        if getattr(module, "bias", None) is not None and "diff_b" in group:
            module.bias.data.copy_(weights_math.apply_bias(module.bias.data, group, multiplier))
    return len(groups)


def merge_base_weights(paths, multipliers, unet, text_encoders, log=print) -> None:
    """kohya's --base_weights: merge each file at its --base_weights_multiplier (default 1.0)."""
    multipliers = list(multipliers or [])
    if len(multipliers) > len(paths or []):
        raise UserError(f"base_weights_multiplier has {len(multipliers)} values for {len(paths or [])} base_weights")
    for index, path in enumerate(paths or []):
        multiplier = multipliers[index] if index < len(multipliers) else 1.0
        count = merge_lora_into_model(path, unet, text_encoders, multiplier)
        log(f"base_weights: merged {count} modules of {path} at multiplier {multiplier}")
