"""The trainable LoRA module that wraps one Linear or Conv2d of the model (kohya's LoRAModule).

Forward: org(x) + up(down(x)) * alpha/r * multiplier (the factor applied to up's weight), with kohya's three dropouts during training
(neuron dropout after `down`, rank dropout per sample with 1/(1-p) compensation, module dropout
that skips the whole LoRA). The wrapped module's `forward` is replaced (apply_to) and can be put
back (restore); the wrapped module is kept in a list so it never enters this module's state dict,
whose keys are exactly the file's: `lora_down.weight`, `lora_up.weight`, `alpha`.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from library.lora import weights_math


class LoRAModule(nn.Module):
    def __init__(self, lora_name: str, org_module: nn.Module, multiplier: float = 1.0, lora_dim: int = 4,
                 alpha: float | None = 1.0, dropout: float | None = None, rank_dropout: float | None = None,
                 module_dropout: float | None = None):
        super().__init__()
        self.lora_name = lora_name
        self.lora_dim = lora_dim
        if isinstance(org_module, nn.Conv2d):
            in_dim, out_dim = org_module.in_channels, org_module.out_channels
            # down carries the spatial kernel (3x3 for LoCon), up is always 1x1: kohya's layout.
            self.lora_down = nn.Conv2d(in_dim, lora_dim, org_module.kernel_size, org_module.stride,
                                       org_module.padding, bias=False)
            self.lora_up = nn.Conv2d(lora_dim, out_dim, (1, 1), (1, 1), bias=False)
        elif isinstance(org_module, nn.Linear):
            self.lora_down = nn.Linear(org_module.in_features, lora_dim, bias=False)
            self.lora_up = nn.Linear(lora_dim, org_module.out_features, bias=False)
        else:
            raise TypeError(f"{lora_name}: LoRA wraps Linear or Conv2d, not {type(org_module).__name__}")
        if isinstance(alpha, torch.Tensor):
            alpha = float(alpha.detach().float())
        alpha = float(lora_dim) if alpha is None or alpha == 0 else float(alpha)
        self.scale = alpha / lora_dim
        self.register_buffer("alpha", torch.tensor(alpha, dtype=torch.float32))
        nn.init.kaiming_uniform_(self.lora_down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_up.weight)
        self.multiplier = multiplier
        self.dropout = dropout
        self.rank_dropout = rank_dropout
        self.module_dropout = module_dropout
        self.org_module = [org_module]
        self.org_forward = None

    def apply_to(self) -> None:
        org = self.org_module[0]
        self.org_forward = org.forward
        org.forward = self.forward

    def restore(self) -> None:
        if self.org_forward is not None:
            self.org_module[0].forward = self.org_forward
            self.org_forward = None

    def lora_output(self, x: torch.Tensor, multiplier: float = 1.0) -> torch.Tensor:
        """up(down(x)) * scale * multiplier, with the training-time dropouts. The scale multiplies
        lora_up's small (out x rank) weight instead of the full-size output: one activation-sized
        product less per module, in forward and in backward (the gradients are the same)."""
        lx = self.lora_down(x)
        if self.dropout and self.training:
            lx = torch.nn.functional.dropout(lx, p=self.dropout)
        scale = self.scale
        if self.rank_dropout and self.training:
            mask = (torch.rand((lx.size(0), self.lora_dim), device=lx.device) > self.rank_dropout).to(lx.dtype)
            if lx.dim() == 3:  # text encoder: [batch, tokens, rank]
                mask = mask.unsqueeze(1)
            elif lx.dim() == 4:  # conv: [batch, rank, h, w]
                mask = mask[:, :, None, None]
            lx = lx * mask
            scale = scale / (1.0 - self.rank_dropout)  # as if the surviving ranks were the whole rank
        return self.scaled_up(lx, scale * multiplier)

    def scaled_up(self, lx: torch.Tensor, factor: float) -> torch.Tensor:
        up = self.lora_up
        weight = up.weight * factor
        if isinstance(up, nn.Conv2d):  # 1x1, stride 1, no bias
            return torch.nn.functional.conv2d(lx, weight)
        return torch.nn.functional.linear(lx, weight)

    def forward(self, x, *args, **kwargs):
        org_out = self.org_forward(x, *args, **kwargs)
        if self.multiplier == 0:
            return org_out
        if self.module_dropout and self.training and torch.rand(1).item() < self.module_dropout:
            return org_out
        return org_out + self.lora_output(x, self.multiplier)

    def key_group(self) -> dict:
        return {"lora_down.weight": self.lora_down.weight, "lora_up.weight": self.lora_up.weight,
                "alpha": self.alpha}

    @torch.no_grad()
    def merge_to(self, group: dict | None = None, multiplier: float | None = None) -> None:
        """Add the delta (of `group`, or of this module's own weights) into the wrapped weight."""
        org = self.org_module[0]
        group = group if group is not None else self.key_group()
        strength = self.multiplier if multiplier is None else multiplier
        org.weight.data.copy_(weights_math.apply_group(org.weight.data, group, strength))

    @torch.no_grad()
    def apply_max_norm(self, max_norm: float) -> tuple[bool, float]:
        """kohya's max-norm: shrink up and down by sqrt(ratio) so ||dW|| <= max_norm."""
        delta = weights_math.delta_weight(self.key_group(), self.org_module[0].weight.shape)
        norm = delta.norm().clamp(min=max_norm / 2)
        desired = norm.clamp(max=max_norm)
        ratio = float(desired / norm)
        if ratio != 1.0:
            self.lora_down.weight.mul_(ratio ** 0.5)
            self.lora_up.weight.mul_(ratio ** 0.5)
        return ratio != 1.0, float(delta.norm()) * ratio
