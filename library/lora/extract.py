"""Extracting a LoRA from two SDXL models: the truncated SVD of (tuned - original) per module.

The modules are those networks.lora trains (kohya's LierLa targets; with a conv rank also the
ResNet/down/upsample convs, C3Lier), so the result loads wherever a trained LoRA does. A text
encoder whose weights differ by at most `min_diff` everywhere is left out, as kohya does (a
fine-tune that did not train it would otherwise add noise). `clamp_quantile` < 1 clamps outliers
in the factors (kohya's 0.99 default); 1 keeps the SVD exact.
"""
from __future__ import annotations

import torch

from library.lora import svd
from library.lora.naming import ModelNames
from library.lora.targets import lierla_names


def target_names(model, conv_rank: int | None) -> list[str]:
    """Canonical names of the modules networks.lora would train on this model."""
    return lierla_names(model.unet, list(model.text_encoders), with_conv=bool(conv_rank))


@torch.no_grad()
def extract(org, tuned, rank: int, conv_rank: int | None, clamp_quantile: float, min_diff: float,
            device: str = "cpu", log=print) -> tuple[dict, dict]:
    """({module name: LoRA key group}, {"te1"/"te2"/"unet": max |diff|})."""
    names = target_names(org, conv_rank)
    org_names = ModelNames(org.unet, org.text_encoders)
    tuned_names = ModelNames(tuned.unet, tuned.text_encoders)
    diffs, max_diff = {}, {}
    for name in names:
        ref = org_names.ref(name)
        before = ref.module.weight.to(device, torch.float32)
        after = tuned_names.ref(name).module.weight.to(device, torch.float32)
        if before.shape != after.shape:
            raise ValueError(f"{name}: shapes differ {tuple(before.shape)} vs {tuple(after.shape)}")
        diffs[name] = (after - before, ref.component)
        max_diff[ref.component] = max(max_diff.get(ref.component, 0.0), float((after - before).abs().max()))
    skipped = {c for c in ("te1", "te2") if c in max_diff and max_diff[c] <= min_diff}
    for component in sorted(skipped):
        log(f"text encoder {component[-1]}: largest weight difference {max_diff[component]:.3g} <= min_diff "
            f"{min_diff:g}, left out")
    groups = {}
    for name, (diff, component) in diffs.items():
        if component in skipped:
            continue
        shape = tuple(diff.shape)
        u, s, vh = torch.linalg.svd(diff.reshape(shape[0], -1), full_matrices=False)
        target = conv_rank if len(shape) == 4 and shape[2:] != (1, 1) else rank
        new_rank = max(1, min(target, s.numel()))
        groups[name] = {k: v.cpu() for k, v in
                        svd.lora_factors(u, s, vh, new_rank, shape, clamp_quantile=clamp_quantile).items()}
    return groups, max_diff
