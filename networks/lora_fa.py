"""LoRA-FA (`network_module = "networks.lora_fa"`, as kohya ships it): a LoRA whose down projection
(A) is frozen at a random Gaussian start and only the up projection (B) trains (Zhang et al. 2023,
"LoRA-FA: memory-efficient low-rank adaptation"): no gradient or optimizer state for A.

Targets, network_args and the saved file are networks.lora's; the file is an ordinary LoRA file
(lora_down / lora_up / alpha) that every UI loads. As kohya's module, A starts from
N(0, 2 / (in + rank)) instead of LoRA's Kaiming-uniform.
"""
from __future__ import annotations

import math

import torch

from networks import lora


class LoRAFANetwork(lora.LoRANetwork):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        with torch.no_grad():
            for module in self.loras:
                weight = module.lora_down.weight
                # in = in_features (Linear) or in_channels (conv), as kohya's lora_fa
                weight.normal_(std=math.sqrt(2.0 / (weight.shape[1] + module.lora_dim)))

    def requires_grad_(self, requires_grad: bool = True):
        super().requires_grad_(requires_grad)
        for module in self.loras:
            module.lora_down.requires_grad_(False)  # A stays frozen whatever is asked
        return self

    def prepare_optimizer_params(self, text_encoder_lr=None, unet_lr=None, default_lr=None):
        """networks.lora's groups with only the trainable (up) weights."""
        groups, descriptions = super().prepare_optimizer_params(text_encoder_lr, unet_lr, default_lr)
        kept_groups, kept_descriptions = [], []
        for group, description in zip(groups, descriptions):
            params = [p for p in group["params"] if p.requires_grad]
            if params:
                kept_groups.append({**group, "params": params})
                kept_descriptions.append(description)
        return kept_groups, kept_descriptions

    def get_trainable_params(self):
        return [p for p in self.parameters() if p.requires_grad]


def create_network(multiplier, network_dim, network_alpha, vae, text_encoder, unet, neuron_dropout=None, **kwargs):
    return lora.build_network(LoRAFANetwork, multiplier, network_dim, network_alpha, text_encoder, unet, neuron_dropout, kwargs)


def create_network_from_weights(multiplier, file, vae, text_encoder, unet, weights_sd=None, for_inference=False, **kwargs):
    return lora.build_network_from_weights(LoRAFANetwork, multiplier, file, text_encoder, unet, weights_sd, kwargs)
