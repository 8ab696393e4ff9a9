"""Low-rank math shared by resize, SVD merge and extraction: deltas as matrices, SVD, rank choice.

weight_shape(name, group)    the base-weight shape a key group implies; for LoHa/LoKr, whose conv
                             factors are flattened, the kernel comes from the SAI module name
delta_matrix(name, group)    dW (alpha/r applied) as a float32 [out, in*kh*kw] matrix
svd_of_group(name, group)    (U, S, Vh) of dW; plain LoRA groups through QR of their factors
                             (exact, and cheap for large modules), everything else by full SVD
choose_rank(S, ...)          fixed rank, or kohya's dynamic rules sv_ratio / sv_cumulative / sv_fro
retained(S, rank)            share of sum(S), Frobenius norm, and max/min ratio a rank keeps
lora_factors(U, S, Vh, ...)  lora_down / lora_up / alpha for a rank, balanced sqrt(S) split
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from library.lora import weights_math

# SDXL (SAI names) 3x3 convolutions: ResNet convs, down/upsamplers, conv_in, conv_out.
_CONV3X3 = re.compile(r"(_in_layers_2|_out_layers_3|_op|_\d+_conv|^lora_unet_input_blocks_0_0|^lora_unet_out_2)$")
_CONV1X1 = re.compile(r"_skip_connection$")
DYNAMIC_METHODS = ("sv_ratio", "sv_cumulative", "sv_fro")


def kernel_of(name: str) -> tuple[int, int] | None:
    """(kh, kw) of an SDXL conv module by its canonical name; None for Linear layers."""
    if _CONV3X3.search(name):
        return (3, 3)
    if _CONV1X1.search(name):
        return (1, 1)
    return None


def _with_kernel(name: str, out: int, cols: int) -> tuple[int, ...]:
    kernel = kernel_of(name)
    if kernel is None:
        return (out, cols)
    area = kernel[0] * kernel[1]
    if cols % area:
        raise weights_math.UnsupportedGroupError(f"{cols} input columns do not fit a {kernel} kernel")
    return (out, cols // area, *kernel)


def weight_shape(name: str, group: dict) -> tuple[int, ...]:
    """Shape of the base weight a key group applies to, read off the factors."""
    algo = weights_math.detect_algo(group)
    if algo == "lora":
        up, down, mid = group["lora_up.weight"], group["lora_down.weight"], group.get("lora_mid.weight")
        kernel = tuple(mid.shape[2:]) if mid is not None else tuple(down.shape[2:])
        if kernel == (1, 1) and up.dim() == 2 and down.dim() == 2:
            kernel = ()
        return (up.shape[0], down.shape[1], *kernel)
    if algo == "full":
        return tuple(group["diff"].shape)
    if "hada_t1" in group or "lokr_t2" in group:
        raise weights_math.UnsupportedGroupError("Tucker-decomposed LoHa/LoKr needs the base model's shapes")
    if algo == "loha":
        return _with_kernel(name, group["hada_w1_a"].shape[0], group["hada_w1_b"].shape[1])
    w1 = group.get("lokr_w1")
    a, b = (w1.shape[0], w1.shape[1]) if w1 is not None else (group["lokr_w1_a"].shape[0], group["lokr_w1_b"].shape[1])
    w2 = group.get("lokr_w2")
    if w2 is not None and w2.dim() == 4:
        return (a * w2.shape[0], b * w2.shape[1], *w2.shape[2:])
    c, d = (w2.shape[0], w2.shape[1]) if w2 is not None else (group["lokr_w2_a"].shape[0], group["lokr_w2_b"].shape[1])
    return _with_kernel(name, a * c, b * d)


def delta_matrix(name: str, group: dict) -> tuple[torch.Tensor, tuple[int, ...]]:
    """(dW as float32 [out, rest], the base-weight shape)."""
    shape = weight_shape(name, group)
    delta = weights_math.delta_weight(group, shape)
    return delta.reshape(shape[0], -1), shape


def svd_of_group(name: str, group: dict):
    """(U, S, Vh, shape) of a group's dW, largest singular value first."""
    shape = weight_shape(name, group)
    if weights_math.detect_algo(group) == "lora" and "lora_mid.weight" not in group:
        up = group["lora_up.weight"].to(torch.float32).reshape(shape[0], -1)
        down = group["lora_down.weight"].to(torch.float32).reshape(up.shape[1], -1)
        alpha = group.get("alpha")
        scale = float(alpha) / down.shape[0] if alpha is not None else 1.0
        q_up, r_up = torch.linalg.qr(up)
        q_down, r_down = torch.linalg.qr(down.T)
        u, s, vh = torch.linalg.svd(scale * (r_up @ r_down.T), full_matrices=False)
        return q_up @ u, s, vh @ q_down.T, shape
    delta, shape = delta_matrix(name, group)
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    return u, s, vh, shape


def choose_rank(s: torch.Tensor, max_rank: int, method: str | None = None, param: float | None = None) -> int:
    """The rank to keep: `max_rank`, or the smallest rank meeting a dynamic rule, capped at `max_rank`.

    sv_ratio p       keep singular values >= s_max / p
    sv_cumulative p  keep the fewest leading values whose sum is >= p * sum(S)
    sv_fro p         keep the fewest leading values with sqrt(sum S_i^2 / sum S^2) >= p
    """
    limit = max(1, min(max_rank, s.numel()))
    if method is None or s.numel() == 0 or float(s[0]) == 0.0:
        return limit
    s = s.to(torch.float64)
    if method == "sv_ratio":
        rank = int((s >= s[0] / param).sum())
    elif method == "sv_cumulative":
        share = torch.cumsum(s, 0) / s.sum()
        rank = int((share < param - 1e-12).sum()) + 1
    elif method == "sv_fro":
        share = torch.sqrt(torch.cumsum(s * s, 0) / (s * s).sum())
        rank = int((share < param - 1e-12).sum()) + 1
    else:
        raise ValueError(f"unknown dynamic method {method}")
    return max(1, min(rank, limit))


@dataclass
class Retained:
    sum_share: float  # sum of kept S / sum of S
    fro_share: float  # Frobenius norm kept / Frobenius norm
    max_ratio: float  # S[0] / S[rank - 1]


def retained(s: torch.Tensor, rank: int) -> Retained:
    s = s.to(torch.float64)
    total, total_sq = float(s.sum()), float((s * s).sum())
    if total == 0.0:
        return Retained(1.0, 1.0, 1.0)
    kept = s[:rank]
    smallest = float(kept[-1])
    return Retained(float(kept.sum()) / total, math.sqrt(float((kept * kept).sum()) / total_sq),
                    float(kept[0]) / smallest if smallest > 0 else math.inf)


def abs_quantile(values: torch.Tensor, q: float) -> float:
    """The q-quantile of |values| (q >= 1: +inf, i.e. no clamping)."""
    if q >= 1.0:
        return math.inf
    flat = values.detach().abs().flatten()
    k = min(flat.numel(), max(1, int(round(q * (flat.numel() - 1))) + 1))
    return float(torch.kthvalue(flat, k).values)


def lora_factors(u, s, vh, rank: int, shape, scale: float = 1.0, clamp_quantile: float = 1.0) -> dict:
    """A LoRA key group whose up @ down * alpha/rank is the rank-`rank` truncation of U S Vh.

    `scale` is the alpha/rank the file should carry (alpha = scale * rank); the singular values
    are split evenly between up and down. `clamp_quantile` < 1 clamps both factors to that
    quantile of their absolute values (kohya's outlier clamp when extracting).
    """
    root = torch.sqrt(s[:rank].clamp_min(0) / scale)
    up = u[:, :rank] * root
    down = root[:, None] * vh[:rank]
    if clamp_quantile < 1.0:
        limit = abs_quantile(torch.cat([up.flatten(), down.flatten()]), clamp_quantile)
        up, down = up.clamp(-limit, limit), down.clamp(-limit, limit)
    if len(shape) == 4:
        down = down.reshape(rank, *shape[1:])
        up = up.reshape(shape[0], rank, 1, 1)
    return {"lora_down.weight": down.contiguous(), "lora_up.weight": up.contiguous(),
            "alpha": torch.tensor(float(scale * rank))}
