"""Optimizer construction from kohya's `optimizer_type` + `optimizer_args` ("key=value" strings).

Names are case-insensitive. Any other value containing a dot is imported as `module.Class`.
Adaptive optimizers (Prodigy, DAdaptation) report their effective lr as d * lr, which the logger
shows as lr/d*lr/<group>.
"""
from __future__ import annotations

import ast
import importlib
import inspect

import torch

from library.errors import UserError


def parse_kwargs(items: list[str] | None, option: str) -> dict:
    """["betas=(0.9,0.99)", "weight_decay=0.01", "decouple=True"] -> {...} with Python literals."""
    kwargs = {}
    for item in items or []:
        if "=" not in item:
            raise UserError(f"{option}: {item!r} is not key=value")
        key, raw = (part.strip() for part in item.split("=", 1))
        try:
            kwargs[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            kwargs[key] = raw
        # "False"/"True" already parse; "none" in lower case appears in kohya configs too
        if isinstance(kwargs[key], str) and kwargs[key].lower() in ("none", "null"):
            kwargs[key] = None
    return kwargs


def _bnb(name: str):
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise UserError(f"optimizer_type {name} needs bitsandbytes: pip install bitsandbytes") from None
    return bnb.optim


def _class_for(name: str):
    key = name.lower()
    if key in ("", "adamw"):
        return torch.optim.AdamW, {}
    if key == "adamw8bit":
        return _bnb(name).AdamW8bit, {}
    if key == "pagedadamw8bit":
        return _bnb(name).PagedAdamW8bit, {}
    if key == "pagedadamw":
        return _bnb(name).PagedAdamW, {}
    if key == "pagedadamw32bit":
        return _bnb(name).PagedAdamW32bit, {}
    if key == "lion":
        from lion_pytorch import Lion

        return Lion, {}
    if key == "lion8bit":
        return _bnb(name).Lion8bit, {}
    if key == "pagedlion8bit":
        return _bnb(name).PagedLion8bit, {}
    if key == "sgdnesterov":
        return torch.optim.SGD, {"nesterov": True, "momentum": 0.9}
    if key == "sgdnesterov8bit":
        return _bnb(name).SGD8bit, {"nesterov": True, "momentum": 0.9}
    if key == "prodigy":
        from prodigyopt import Prodigy

        return Prodigy, {}
    if key == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor, {}
    if key.startswith("dadapt"):
        import dadaptation

        classes = {
            "dadaptation": dadaptation.DAdaptAdam,
            "dadaptadam": dadaptation.DAdaptAdam,
            "dadaptadagrad": dadaptation.DAdaptAdaGrad,
            "dadaptadan": dadaptation.DAdaptAdan,
            "dadaptlion": dadaptation.DAdaptLion,
            "dadaptsgd": dadaptation.DAdaptSGD,
        }
        if key in ("dadaptadanip", "dadaptadampreprint"):
            import dadaptation.experimental as experimental

            classes["dadaptadanip"] = experimental.DAdaptAdanIP
            classes["dadaptadampreprint"] = experimental.DAdaptAdamPreprint
        if key in classes:
            return classes[key], {}
    if key.endswith("schedulefree"):
        import schedulefree

        classes = {
            "adamwschedulefree": schedulefree.AdamWScheduleFree,
            "sgdschedulefree": schedulefree.SGDScheduleFree,
            "radamschedulefree": schedulefree.RAdamScheduleFree,
        }
        if key in classes:
            return classes[key], {}
    if "." in name:
        module_name, _, class_name = name.rpartition(".")
        try:
            return getattr(importlib.import_module(module_name), class_name), {}
        except (ImportError, AttributeError) as error:
            raise UserError(f"optimizer_type {name}: cannot import ({error})") from None
    raise UserError(
        f"optimizer_type {name!r} is unknown; use AdamW, AdamW8bit, PagedAdamW8bit, Lion, Lion8bit, SGDNesterov, "
        "SGDNesterov8bit, Prodigy, AdaFactor, DAdaptAdam (and other DAdapt*), AdamWScheduleFree, or module.Class"
    )


def is_schedule_free(optimizer) -> bool:
    """schedulefree's optimizers and its ScheduleFreeWrapper (train()/eval() switch the weights)."""
    return (hasattr(optimizer, "train") and hasattr(optimizer, "eval")
            and any(cls.__module__.startswith("schedulefree") for cls in type(optimizer).__mro__))


def is_adaptive(optimizer) -> bool:
    """Optimizers that estimate their own step size d (logged as d*lr)."""
    return any("d" in group for group in optimizer.param_groups) and type(optimizer).__name__.lower().startswith(("prodigy", "dadapt"))


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
    cls, defaults = _class_for(args.optimizer_type or "AdamW")
    from library.training.optim.optimizer_options import named_optimizer_kwargs  # prodigy_*/adam_* conveniences

    kwargs = {**defaults, **parse_kwargs(args.optimizer_args, "optimizer_args"), **named_optimizer_kwargs(args, cls)}
    kwargs.update(_fast_implementation(cls, kwargs, param_groups))
    lr = args.learning_rate
    if cls.__name__ == "Adafactor":
        # kohya semantics: relative_step defaults to True; then Adafactor picks its own lr and
        # the scheduler must be "adafactor".
        kwargs.setdefault("relative_step", True)
        if kwargs["relative_step"]:
            kwargs.setdefault("scale_parameter", True)
            kwargs.setdefault("warmup_init", False)
            for group in param_groups:
                group.pop("lr", None)
            lr = None
            if args.lr_scheduler != "adafactor":
                args.lr_scheduler = "adafactor"
    try:
        optimizer = cls(param_groups, lr=lr, **kwargs) if lr is not None else cls(param_groups, **kwargs)
    except TypeError as error:
        raise UserError(f"optimizer_args for {cls.__name__}: {error}") from None
    from library.training.optim.schedule_free import wrap_schedule_free  # optimizer_schedulefree_wrapper

    return wrap_schedule_free(optimizer, args)
