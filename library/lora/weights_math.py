"""The one place that turns a LoRA-family key group into its effect on a base weight.

A key group is the tensors one module name carries in a file, keyed by suffix
(`lora_down.weight`, `hada_w1_a`, `lokr_w2_b`, `dora_scale`, `alpha`, ...). Supported:

  lora / locon  lora_down, lora_up (Linear or conv, 3x3 down), Tucker lora_mid;  dW = up @ down * alpha/r
  loha          hada_w{1,2}_{a,b} (+ Tucker hada_t1/t2);  dW = (w1a@w1b) * (w2a@w2b) * alpha/r
  lokr          lokr_w1 | lokr_w1_a@lokr_w1_b, lokr_w2 | lokr_w2_a@lokr_w2_b (+ Tucker lokr_t2);
                dW = kron(w1, w2) * alpha/r, where r is the rank of a factorised half (scale 1 if none)
  full          diff (+ diff_b), the delta itself
  dora          any of the above plus dora_scale: W' = m * (W + dW) / ||W + dW||, the norm over the
                axis dora_scale has (per output row for [out, 1], per input column for [1, in])

The scale convention (alpha/r applied once) is the one ComfyUI, A1111 and LyCORIS' forward pass
use. The rank products reuse LyCORIS' functional code, pinned to its eager torch backend so that
results do not depend on which GPU kernels happen to be installed.

`strength` scales the change from the base weight: W + s * (W' - W). For plain deltas this is
W + s * dW; for DoRA at s = 1 it equals LyCORIS' merged weight (ComfyUI's convention for s != 1).
"""
from __future__ import annotations

import torch



def _lycoris(name: str):
    """lycoris.functional.<name>, imported on first use: importing lycoris pulls in peft and
    bitsandbytes (8+ s), which a plain LoRA training run never needs (docs/performance.md)."""
    import importlib

    return importlib.import_module(f"lycoris.functional.{name}")

_BACKEND = "torch"
_LORA_KEYS = ("lora_down.weight", "lora_up.weight")
_LOHA_KEYS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
_KNOWN = set(_LORA_KEYS) | set(_LOHA_KEYS) | {
    "lora_mid.weight", "alpha", "dora_scale", "hada_t1", "hada_t2", "lokr_w1", "lokr_w1_a",
    "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t1", "lokr_t2", "diff", "diff_b",
}


class UnsupportedGroupError(ValueError):
    """A key group this module cannot apply (an unknown algorithm or suffix)."""


def detect_algo(group: dict) -> str:
    """'lora', 'loha', 'lokr' or 'full' for a key group; UnsupportedGroupError otherwise."""
    unknown = sorted(set(group) - _KNOWN)
    if unknown:
        raise UnsupportedGroupError(f"unsupported keys {unknown}")
    if all(k in group for k in _LORA_KEYS):
        return "lora"
    if all(k in group for k in _LOHA_KEYS):
        return "loha"
    has_w1 = "lokr_w1" in group or ("lokr_w1_a" in group and "lokr_w1_b" in group)
    has_w2 = "lokr_w2" in group or ("lokr_w2_a" in group and "lokr_w2_b" in group)
    if has_w1 and has_w2:
        return "lokr"
    if "diff" in group:
        return "full"
    raise UnsupportedGroupError(f"incomplete key group {sorted(group)}")


def is_dora(group: dict) -> bool:
    return "dora_scale" in group


def _alpha_scale(group: dict, rank: int | None) -> float:
    """alpha / rank; a missing alpha (PEFT files) or missing rank means scale 1."""
    alpha = group.get("alpha")
    if alpha is None or rank is None:
        return 1.0
    return float(alpha) / rank


def _f32(group: dict, key: str):
    value = group.get(key)
    return None if value is None else value.detach().to(torch.float32)


def delta_weight(group: dict, shape) -> torch.Tensor:
    """The scaled delta dW (float32, reshaped to `shape`) of a key group, without DoRA."""
    algo = detect_algo(group)
    g = lambda k: _f32(group, k)  # noqa: E731
    if algo == "lora":
        down, up, mid = g("lora_down.weight"), g("lora_up.weight"), g("lora_mid.weight")
        scale = _alpha_scale(group, down.shape[0])
        # lora_up of a conv is [out, r, 1, 1]; a Linear up/down may pair with a 1x1 conv base.
        delta = _lycoris("locon").diff_weight(down, up, mid, gamma=scale, backend=_BACKEND)
    elif algo == "loha":
        w1b = g("hada_w1_b")
        scale = _alpha_scale(group, w1b.shape[0])
        delta = _lycoris("loha").diff_weight(w1b, g("hada_w1_a"), g("hada_w2_b"), g("hada_w2_a"),
                                      g("hada_t1"), g("hada_t2"), gamma=scale, backend=_BACKEND)
    elif algo == "lokr":
        w1, w1a, w1b = g("lokr_w1"), g("lokr_w1_a"), g("lokr_w1_b")
        w2, w2a, w2b, t2 = g("lokr_w2"), g("lokr_w2_a"), g("lokr_w2_b"), g("lokr_t2")
        # The rank is that of the factorised half; with both halves full the scale is 1.
        rank = w1b.shape[0] if w1b is not None else (w2b.shape[0] if w2b is not None else None)
        scale = _alpha_scale(group, rank)
        delta = _lycoris("lokr").kron_weight(w1, w1a, w1b, w2, w2a, w2b, t2, scale=scale, backend=_BACKEND)
    else:
        delta = g("diff")
    if delta.numel() != torch.Size(shape).numel():
        raise UnsupportedGroupError(f"delta has {tuple(delta.shape)} elements, base weight is {tuple(shape)}")
    return delta.reshape(shape)


def dora_weight(base: torch.Tensor, delta: torch.Tensor, dora_scale: torch.Tensor) -> torch.Tensor:
    """W' = m * (W + dW) / ||W + dW|| on the axis dora_scale is laid out for (float32)."""
    weight = base.to(torch.float32) + delta
    scale = dora_scale.detach().to(torch.float32)
    on_out = scale.shape[0] == weight.shape[0] and (scale.dim() == 1 or scale.shape[1] == 1)
    if on_out:
        scale = scale.reshape(weight.shape[0], *[1] * (weight.dim() - 1))
    else:
        scale = scale.reshape(1, weight.shape[1], *[1] * (weight.dim() - 2))
    return _lycoris("general").weight_decompose(weight, scale, 1.0, wd_on_out=on_out, backend=_BACKEND)


def apply_group(base: torch.Tensor, group: dict, strength: float = 1.0) -> torch.Tensor:
    """The base weight with the key group applied at `strength`, in the base's dtype, computed on the
    base's device (a model on the GPU merges a LoRA loaded on the CPU)."""
    group = {key: value.to(base.device) for key, value in group.items()}
    delta = delta_weight(group, base.shape)
    if is_dora(group):
        target = dora_weight(base, delta, group["dora_scale"])
        new = base.to(torch.float32) + strength * (target - base.to(torch.float32))
    else:
        new = base.to(torch.float32) + strength * delta
    return new.to(base.dtype)


def apply_bias(base_bias: torch.Tensor | None, group: dict, strength: float = 1.0) -> torch.Tensor | None:
    """A `full` group's diff_b applied to the bias (other algorithms leave the bias alone)."""
    diff_b = group.get("diff_b")
    if diff_b is None or base_bias is None:
        return base_bias
    return (base_bias.to(torch.float32) + strength * diff_b.to(base_bias.device, torch.float32)).to(base_bias.dtype)
