"""Combining LoRA files: into a model's weights, or into one LoRA file (exact concat or kohya's sum).

Every input is a `Source`: a file's key groups, a ratio, and optional per-module strengths (block
weights). A module's effective strength is ratio * strength.

merge_into_model   W <- apply_group(W, group, strength) for each source in turn, through the shared
                   apply module, so every format works, DoRA included
concat             one LoRA whose rank is the sum of the inputs' ranks: down = [d1; d2],
                   up = [s1 u1, s2 u2] with s_i = strength * alpha_i / r_i and alpha = rank, so
                   up @ down equals the sum of the deltas exactly
sum_equal_rank     kohya's non-concat merge for equal ranks: down and up summed with sqrt-scaled
                   weights. Exact for one input; for several it adds cross terms (u1 d2 ...), which
                   is why --concat (or svd_merge_lora.py) is the exact choice
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from library.errors import UserError
from library.lora import weights_math
from library.lora.naming import ModelNames


@dataclass
class Source:
    path: str
    groups: dict
    ratio: float = 1.0
    strengths: dict = field(default_factory=dict)  # module name -> block weight (missing: 1)

    def strength(self, name: str) -> float:
        return self.ratio * self.strengths.get(name, 1.0)


@torch.no_grad()
def merge_into_model(sources: list[Source], unet, text_encoders) -> int:
    """Merge every source into the model's weights in place; returns the number of module merges."""
    names = ModelNames(unet, text_encoders)
    count = 0
    for source in sources:
        missing = sorted(n for n in source.groups if n not in names.refs)
        if missing:
            raise UserError(f"{source.path}: {len(missing)} modules are not in this model (a LoRA for another "
                            f"SDXL size?), e.g. {', '.join(missing[:3])}")
        for name, group in source.groups.items():
            strength = source.strength(name)
            if strength == 0:
                continue
            module = names.ref(name).module
            try:
                module.weight.data.copy_(weights_math.apply_group(module.weight.data, group, strength))
            except weights_math.UnsupportedGroupError as error:
                raise UserError(f"{source.path}: module {name} cannot be merged: {error}") from None
            if getattr(module, "bias", None) is not None and "diff_b" in group:
                module.bias.data.copy_(weights_math.apply_bias(module.bias.data, group, strength))
            count += 1
    return count


def _lora_factors(source: Source, name: str, group: dict, operation: str):
    if weights_math.detect_algo(group) != "lora" or "lora_mid.weight" in group or weights_math.is_dora(group):
        kind = "DoRA" if weights_math.is_dora(group) else \
            "Tucker LoCon" if "lora_mid.weight" in group else weights_math.detect_algo(group)
        raise UserError(f"{source.path}: module {name} is {kind}; {operation} needs plain LoRA/LoCon factors "
                        f"(use networks/svd_merge_lora.py for LoHa/LoKr/Tucker, or merge DoRA into a checkpoint)")
    down, up = group["lora_down.weight"], group["lora_up.weight"]
    alpha = group.get("alpha")
    scale = float(alpha) / down.shape[0] if alpha is not None else 1.0
    return down.to(torch.float32), up.to(torch.float32), scale


def _check_kernels(name: str, downs: list[torch.Tensor]) -> None:
    if len({tuple(d.shape[1:]) for d in downs}) > 1:
        raise UserError(f"module {name}: the inputs disagree on its shape {[tuple(d.shape) for d in downs]}")


def concat(sources: list[Source]) -> tuple[dict, dict]:
    """(groups, {module: rank}) of the exact rank-concatenated LoRA."""
    names = sorted({n for s in sources for n in s.groups})
    out, ranks = {}, {}
    for name in names:
        downs, ups = [], []
        for source in sources:
            if name not in source.groups:
                continue
            down, up, scale = _lora_factors(source, name, source.groups[name], "--concat")
            strength = source.strength(name)
            if strength == 0:
                continue
            downs.append(down)
            ups.append(up * (strength * scale))
        if not downs:
            continue
        _check_kernels(name, downs)
        down, up = torch.cat(downs, dim=0), torch.cat(ups, dim=1)
        rank = down.shape[0]
        out[name] = {"lora_down.weight": down, "lora_up.weight": up, "alpha": torch.tensor(float(rank))}
        ranks[name] = rank
    return out, ranks


def sum_equal_rank(sources: list[Source]) -> tuple[dict, dict]:
    """(groups, {module: rank}) of kohya's summed merge; the first source's alpha is kept per module."""
    names = sorted({n for s in sources for n in s.groups})
    out, ranks = {}, {}
    for name in names:
        parts = [(s, *_lora_factors(s, name, s.groups[name], "merging LoRAs")) for s in sources if name in s.groups]
        _check_kernels(name, [p[1] for p in parts])
        rank_set = {p[1].shape[0] for p in parts}
        if len(rank_set) > 1:
            raise UserError(f"module {name} has ranks {sorted(rank_set)} in the inputs; summing needs equal ranks "
                            f"(use --concat for an exact merge of different ranks)")
        rank = rank_set.pop()
        base_alpha = parts[0][3] * rank
        down_sum = up_sum = None
        for source, down, up, scale in parts:
            strength = source.strength(name)
            factor = math.sqrt(abs(strength) * scale * rank / base_alpha)
            sign = -1.0 if strength < 0 else 1.0
            down_sum = down * factor if down_sum is None else down_sum + down * factor
            up_sum = up * factor * sign if up_sum is None else up_sum + up * factor * sign
        out[name] = {"lora_down.weight": down_sum, "lora_up.weight": up_sum, "alpha": torch.tensor(float(base_alpha))}
        ranks[name] = rank
    return out, ranks
