"""Which optimizer class a kohya `optimizer_type` names, and `optimizer_args` ("key=value" strings) as
Python values. Names are case-insensitive; any other value containing a dot is imported as
`module.Class`. Shared by the optimizer builder, its option checks, the schedule-free wrapper, the
LR schedulers and the run metadata.
"""
from __future__ import annotations

import ast
import importlib

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


def class_for(name: str):
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
