"""New ranks for LoRA files: resizing one file, and merging several through an SVD of their sum.

Both turn each module's delta dW into its truncated SVD and write plain LoRA/LoCon factors
(library.lora.svd), so LoHa/LoKr inputs come out as LoRA. Linear and 1x1 modules get `rank`, 3x3
convolutions `conv_rank`. DoRA is refused by the callers: its effect is not a delta.

Resizing keeps each module's alpha/rank (so training can continue with the same scale); the SVD
merge writes alpha = rank. With a dynamic method the rank is chosen per module (library.lora.svd
.choose_rank) and capped at the requested rank.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from library.errors import UserError
from library.lora import svd, weights_math


@dataclass
class ModuleResult:
    name: str
    old_rank: int | None
    new_rank: int
    kept: svd.Retained


def _is_conv3x3(shape) -> bool:
    return len(shape) == 4 and tuple(shape[2:]) != (1, 1)


def _old_rank(group: dict) -> int | None:
    if "lora_down.weight" in group:
        return group["lora_down.weight"].shape[0]
    if "hada_w1_b" in group:
        return group["hada_w1_b"].shape[0]
    return None


def _scale_of(group: dict) -> float:
    if weights_math.detect_algo(group) != "lora":
        return 1.0
    alpha = group.get("alpha")
    return float(alpha) / group["lora_down.weight"].shape[0] if alpha is not None else 1.0


def _target(shape, rank: int, conv_rank: int | None) -> int:
    return (conv_rank or rank) if _is_conv3x3(shape) else rank


def resize(groups: dict, rank: int, conv_rank: int | None = None, method: str | None = None,
           param: float | None = None, source: str = "LoRA") -> tuple[dict, list[ModuleResult]]:
    """(resized groups, per-module results) of one file."""
    out, results = {}, []
    for name in sorted(groups):
        group = groups[name]
        try:
            u, s, vh, shape = svd.svd_of_group(name, group)
        except weights_math.UnsupportedGroupError as error:
            raise UserError(f"{source}: module {name} cannot be resized: {error}") from None
        new_rank = svd.choose_rank(s, _target(shape, rank, conv_rank), method, param)
        out[name] = svd.lora_factors(u, s, vh, new_rank, shape, scale=_scale_of(group))
        results.append(ModuleResult(name, _old_rank(group), new_rank, svd.retained(s, new_rank)))
    return out, results


def svd_merge(sources, rank: int, conv_rank: int | None = None, method: str | None = None,
              param: float | None = None) -> tuple[dict, list[ModuleResult]]:
    """(groups, results) of the rank-`rank` SVD of sum(strength_i * dW_i) over `sources`
    (library.lora.combine.Source objects)."""
    names = sorted({n for s in sources for n in s.groups})
    out, results = {}, []
    for name in names:
        total, shape = None, None
        for source in sources:
            if name not in source.groups:
                continue
            try:
                delta, this_shape = svd.delta_matrix(name, source.groups[name])
            except weights_math.UnsupportedGroupError as error:
                raise UserError(f"{source.path}: module {name} cannot be merged: {error}") from None
            if shape is not None and tuple(this_shape) != tuple(shape):
                raise UserError(f"module {name}: the inputs disagree on its shape ({shape} vs {this_shape})")
            shape = this_shape
            part = delta * source.strength(name)
            total = part if total is None else total + part
        if total is None or not bool(total.any()):
            continue  # every input had weight 0 here
        u, s, vh = torch.linalg.svd(total, full_matrices=False)
        new_rank = svd.choose_rank(s, _target(shape, rank, conv_rank), method, param)
        out[name] = svd.lora_factors(u, s, vh, new_rank, shape)
        results.append(ModuleResult(name, None, new_rank, svd.retained(s, new_rank)))
    return out, results


def describe(result: ModuleResult) -> str:
    """One line per module, the figures --verbose prints."""
    k = result.kept
    old = f"{result.old_rank} -> " if result.old_rank is not None else ""
    return (f"{result.name}: rank {old}{result.new_rank}, sum(S) retained {k.sum_share:.6f}, "
            f"fro retained {k.fro_share:.6f}, max(S) ratio {k.max_ratio:.4f}")


def summary(results: list[ModuleResult]) -> str:
    ranks = [r.new_rank for r in results]
    fro = [r.kept.fro_share for r in results]
    return (f"{len(results)} modules, rank {min(ranks)}-{max(ranks)} (mean {sum(ranks) / len(ranks):.2f}), "
            f"fro retained mean {sum(fro) / len(fro):.4f}, min {min(fro):.4f}")
