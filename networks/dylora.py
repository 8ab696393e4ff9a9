"""DyLoRA for SDXL in the kohya network-module contract (`network_module = "networks.dylora"`).

DyLoRA trains every rank prefix of one LoRA at once: each step picks b (a multiple of `unit`) and
uses ranks [0, b + unit), training only the newest slice [b, b + unit) while the lower ranks are
held (detached). The state dict is a plain LoRA at full rank (`lora_down.weight`,
`lora_up.weight`, `alpha`); networks/extract_lora_from_dylora.py cuts it to any multiple of unit.

Scale: the truncated forward keeps alpha/dim for every prefix (the DyLoRA paper's scheme), so a
rank-r cut saved with alpha_r = alpha * r / dim reproduces exactly the network trained at rank r.
kohya instead keeps alpha unchanged on extraction and rescales by sqrt(dim / r) while training;
files differ only in their alpha values.

network_args: unit, conv_dim, conv_alpha (same targets as networks.lora). Same names, saving and
loading as networks.lora.
"""
from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from library.errors import UserError
from library.lora import network_args as na
from library.lora.file_io import load_lora_for_model
from library.lora.modules import LoRAModule
from library.lora.naming import ModelNames, group_by_module
from networks.lora import LoRANetwork, _as_list

ARG_PARSERS = {"unit": na.as_int, "conv_dim": na.as_int, "conv_alpha": na.as_float}


class DyLoRAModule(LoRAModule):
    def __init__(self, lora_name, org_module, multiplier=1.0, lora_dim=4, alpha=1.0, dropout=None,
                 rank_dropout=None, module_dropout=None, unit=1):
        # kohya's DyLoRA has no dropouts; the nested-rank sampling is its regulariser.
        super().__init__(lora_name, org_module, multiplier, lora_dim, alpha)
        if unit < 1 or lora_dim % unit:
            raise UserError(f"DyLoRA: unit={unit} must be >= 1 and divide the rank {lora_dim} ({lora_name})")
        self.unit = unit
        self.eval_rank: int | None = None  # outside training: use this many ranks (None = all)

    def _weights(self):
        down, up = self.lora_down.weight, self.lora_up.weight
        if self.training:
            start = random.randrange(0, self.lora_dim // self.unit) * self.unit
            stop = start + self.unit
            down = torch.cat([down[:start].detach(), down[start:stop]], dim=0)
            up = torch.cat([up[:, :start].detach(), up[:, start:stop]], dim=1)
        elif self.eval_rank is not None:
            down, up = down[: self.eval_rank], up[:, : self.eval_rank]
        return down, up

    def lora_output(self, x: torch.Tensor, multiplier: float = 1.0) -> torch.Tensor:
        down, up = self._weights()
        if isinstance(self.lora_down, torch.nn.Conv2d):
            lx = F.conv2d(x, down, stride=self.lora_down.stride, padding=self.lora_down.padding)
            return F.conv2d(lx, up) * (self.scale * multiplier)
        return F.linear(F.linear(x, down), up) * (self.scale * multiplier)

    def key_group(self) -> dict:
        """The key group of the rank in use (eval_rank), with alpha kept at the same scale."""
        rank = self.eval_rank or self.lora_dim
        return {"lora_down.weight": self.lora_down.weight[:rank], "lora_up.weight": self.lora_up.weight[:, :rank],
                "alpha": self.alpha * rank / self.lora_dim}


class DyLoRANetwork(LoRANetwork):
    def set_eval_rank(self, rank: int | None) -> None:
        """Evaluate (and merge) with the first `rank` ranks only; None = full rank."""
        for lora in self.loras:
            if rank is not None and (rank % lora.unit or rank > lora.lora_dim):
                raise UserError(f"DyLoRA: rank {rank} is not a multiple of unit {lora.unit} up to {lora.lora_dim}")
            lora.eval_rank = rank


def create_network(multiplier, network_dim, network_alpha, vae, text_encoder, unet, neuron_dropout=None, **kwargs):
    args = na.parse_args(kwargs, ARG_PARSERS, "networks.dylora")
    network_dim = 4 if network_dim is None else int(network_dim)
    network_alpha = 1.0 if network_alpha is None else float(network_alpha)
    conv_dim = args.get("conv_dim")
    conv_alpha = (1.0 if args.get("conv_alpha") is None else args["conv_alpha"]) if conv_dim else None
    return DyLoRANetwork(text_encoder, unet, multiplier=multiplier, lora_dim=network_dim, alpha=network_alpha,
                         conv_lora_dim=conv_dim, conv_alpha=conv_alpha, module_class=DyLoRAModule,
                         module_kwargs={"unit": args.get("unit") or 1})


def create_network_from_weights(multiplier, file, vae, text_encoder, unet, weights_sd=None, for_inference=False,
                                **kwargs):
    args = na.parse_args(kwargs, ARG_PARSERS, "networks.dylora")
    names = ModelNames(unet, _as_list(text_encoder))
    weights_sd, _ = load_lora_for_model(file if weights_sd is None else weights_sd, names)
    groups = group_by_module(weights_sd)
    modules_dim = {n: g["lora_down.weight"].shape[0] for n, g in groups.items() if "lora_down.weight" in g}
    if len(modules_dim) != len(groups):
        raise UserError(f"{file}: a DyLoRA file holds only lora_down/lora_up/alpha keys")
    modules_alpha = {n: float(groups[n].get("alpha", modules_dim[n])) for n in modules_dim}
    network = DyLoRANetwork(text_encoder, unet, multiplier=multiplier, modules_dim=modules_dim,
                            modules_alpha=modules_alpha, module_class=DyLoRAModule,
                            module_kwargs={"unit": args.get("unit") or 1})
    network.load_state_dict(weights_sd, strict=False)
    return network, weights_sd
