"""Optimizer construction from kohya's `optimizer_type` + `optimizer_args` (classes and argument
parsing: optimizer_classes.py). Adaptive optimizers (Prodigy, DAdaptation) report their effective lr as d * lr, which the logger
shows as lr/d*lr/<group>.
"""
from __future__ import annotations

import inspect

from library.errors import UserError
from library.training.optim.optimizer_classes import class_for, parse_kwargs
from library.training.optim.optimizer_options import named_optimizer_kwargs
from library.training.optim.schedule_free import wrap_schedule_free


def _fast_implementation(cls, kwargs: dict, param_groups: list[dict]) -> dict:
    """torch.optim's fastest update for a LoRA's hundreds of small tensors, unless optimizer_args chose.

    torch picks its multi-tensor ("foreach") update only on CUDA and never its fused kernels. Both
    also run on the CPU: for AdamW on the tiny model's 484 LoRA tensors the fused step takes ~5 ms
    against ~30 ms multi-tensor and ~75 ms one tensor at a time (docs/performance.md). The fused
    kernels exist for floating-point parameters on the devices torch lists (CPU and CUDA included).
    """
    if not cls.__module__.startswith("torch.optim") or "fused" in kwargs or "foreach" in kwargs:
        return {}
    parameters = inspect.signature(cls).parameters
    if "fused" in parameters and _fused_kernels_cover(param_groups):
        return {"fused": True}
    return {"foreach": True} if "foreach" in parameters else {}


def _fused_kernels_cover(param_groups: list[dict]) -> bool:
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

        devices = set(_get_fused_kernels_supported_devices())
    except ImportError:  # a private helper: if a torch release moves it, the two devices we know
        devices = {"cpu", "cuda"}
    tensors = [p for group in param_groups for p in group["params"]]
    return bool(tensors) and all(p.is_floating_point() and p.device.type in devices for p in tensors)


def build_optimizer(args, param_groups: list[dict]):
    """(optimizer, the lr the scheduler should start from) for the configured optimizer."""
    cls, defaults = class_for(args.optimizer_type or "AdamW")
    kwargs = {**defaults, **parse_kwargs(args.optimizer_args, "optimizer_args"), **named_optimizer_kwargs(args, cls)}
    kwargs.update(_fast_implementation(cls, kwargs, param_groups))
    lr = args.learning_rate
    if cls.__name__ == "Adafactor":
        # kohya semantics: relative_step defaults to True; then Adafactor picks its own lr (the
        # config resolution has switched lr_scheduler to "adafactor": kohya_compat.py)
        kwargs.setdefault("relative_step", True)
        if kwargs["relative_step"]:
            kwargs.setdefault("scale_parameter", True)
            kwargs.setdefault("warmup_init", False)
            for group in param_groups:
                group.pop("lr", None)
            lr = None
    try:
        optimizer = cls(param_groups, lr=lr, **kwargs) if lr is not None else cls(param_groups, **kwargs)
    except TypeError as error:
        raise UserError(f"optimizer_args for {cls.__name__}: {error}") from None
    return wrap_schedule_free(optimizer, args)
