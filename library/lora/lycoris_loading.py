"""Rebuild LyCORIS modules from a file where LyCORIS 4.1.3's own `make_module_from_state_dict` cannot.

Two cases fail in LyCORIS 4.1.3 (used by networks/lycoris_kohya.create_network_from_weights):
- DoRA with `wd_on_output = False`: the magnitude is per input channel (`dora_scale` [1, in, ...]),
  but LyCORIS always rebuilds the module with per-output magnitudes and the copy fails.
- LoKr with Tucker conv factors (`lokr_t2`, `use_tucker`, with or without `decompose_both`): LyCORIS
  reads the rank and the factor sizes from the wrong axes of `lokr_w2_a` and builds a module of
  another shape (`'LokrModule' object has no attribute 'lokr_w2_a'`).

`lycoris_loading_fixes()` swaps in builders that take the module's shape from the base layer and
the factor layout from the file's tensors, for the duration of one load.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from library.errors import UserError


def dora_on_input_axis(dora_scale: torch.Tensor | None, weight: torch.Tensor) -> bool:
    """True for a per-input-channel magnitude ([1, in, ...]: LyCORIS' wd_on_output = False)."""
    if dora_scale is None or dora_scale.dim() < 2 or weight.shape[0] == 1:
        return False
    return dora_scale.shape[0] == 1 and dora_scale.shape[1] == weight.shape[1]


def _set_input_axis_dora(module, dora_scale: torch.Tensor) -> None:
    module.wd_on_out = False
    module.dora_scale = nn.Parameter(dora_scale.detach().clone().float())


def _dora_aware(original):
    """Wrap a LoCon/LoHa builder (dora_scale is its last tensor) to accept per-input magnitudes."""

    def build(cls, lora_name, orig_module, *weights):
        dora_scale = weights[-1]
        base = orig_module.weight
        if not dora_on_input_axis(dora_scale, base):
            return original(cls, lora_name, orig_module, *weights)
        placeholder = torch.ones(base.shape[0], *[1] * (base.dim() - 1))  # the layout LyCORIS expects
        module = original(cls, lora_name, orig_module, *weights[:-1], placeholder)
        _set_input_axis_dora(module, dora_scale)
        return module

    return build


def _lokr_candidates(w1_shape, w2_shape):
    """(factor, unbalanced) pairs that may reproduce the file's Kronecker split."""
    sizes = sorted({*w1_shape, *w2_shape})
    return [(factor, unbalanced) for unbalanced in (False, True) for factor in [-1, *sizes]]


def _lokr_shapes(w1, w1a, w1b, w2, w2a, w2b, t2):
    w1_shape = tuple(w1.shape[:2]) if w1 is not None else (w1a.shape[0], w1b.shape[1])
    if w2 is not None:
        w2_shape = tuple(w2.shape[:2])
    elif t2 is not None:  # Tucker: w2_a [r, b], w2_b [r, d] around the core t2 [r, r, k, k]
        w2_shape = (w2a.shape[1], w2b.shape[1])
    else:  # w2_a [b, r], w2_b [r, d * k * k]
        w2_shape = (w2a.shape[0], None)
    return w1_shape, w2_shape


@contextlib.contextmanager
def _quiet_lycoris():
    import logging

    from lycoris.logging import logger

    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def build_lokr(cls, lora_name, orig_module, w1, w1a, w1b, w2, w2a, w2b, _t1, t2, alpha, dora_scale):
    """A LokrModule with exactly the file's factors (any mix of full, low-rank and Tucker halves)."""
    if w1a is not None:
        rank = w1a.shape[1]
    elif t2 is not None:
        rank = t2.shape[0]
    elif w2a is not None:
        rank = w2a.shape[1]
    else:
        rank = None  # both halves full: LyCORIS' full_matrix, scale 1
    w1_shape, w2_shape = _lokr_shapes(w1, w1a, w1b, w2, w2a, w2b, t2)
    given = {"lokr_w1": w1, "lokr_w1_a": w1a, "lokr_w1_b": w1b, "lokr_w2": w2, "lokr_w2_a": w2a, "lokr_w2_b": w2b,
             "lokr_t2": t2}
    given = {k: v for k, v in given.items() if v is not None}
    on_input = dora_on_input_axis(dora_scale, orig_module.weight)
    for factor, unbalanced in _lokr_candidates(w1_shape, [s for s in w2_shape if s is not None]):
        try:
            with _quiet_lycoris():  # trial builds log "using full matrix mode" warnings
                module = cls(lora_name, orig_module, 1, rank or 1, float(alpha), use_tucker=t2 is not None,
                             decompose_both=w1a is not None, factor=factor, weight_decompose=dora_scale is not None,
                             wd_on_out=not on_input, full_matrix=rank is None, unbalanced_factorization=unbalanced)
        except (ValueError, RuntimeError):
            continue
        params = {name: p for name, p in module.named_parameters() if name.startswith("lokr_")}
        if set(params) == set(given) and all(params[k].shape == v.shape for k, v in given.items()):
            with torch.no_grad():
                for name, value in given.items():
                    params[name].copy_(value)
                if dora_scale is not None:
                    module.dora_scale.copy_(dora_scale)
            return module
    raise UserError(f"{lora_name}: cannot rebuild a LoKr module with factors "
                    f"{ {k: tuple(v.shape) for k, v in given.items()} } on a layer of shape {tuple(orig_module.weight.shape)}")


@contextlib.contextmanager
def lycoris_loading_fixes():
    """Within the block, LyCORIS builds DoRA (both axes) and Tucker LoKr modules from files correctly."""
    from lycoris.modules.locon import LoConModule
    from lycoris.modules.loha import LohaModule
    from lycoris.modules.lokr import LokrModule

    saved = {cls: cls.__dict__["make_module_from_state_dict"] for cls in (LoConModule, LohaModule, LokrModule)}
    try:
        for cls in (LoConModule, LohaModule):
            cls.make_module_from_state_dict = classmethod(_dora_aware(saved[cls].__func__))
        LokrModule.make_module_from_state_dict = classmethod(build_lokr)
        yield
    finally:
        for cls, original in saved.items():
            cls.make_module_from_state_dict = original
