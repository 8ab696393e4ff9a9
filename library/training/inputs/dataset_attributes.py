"""Per-dataset and per-subset settings that act inside a training step, as in kohya.

  * network_multiplier (dataset option): the LoRA strength while training on that dataset's
    batches (a batch never mixes datasets). kohya introduced it for exactly this; its current
    train_network.py accepts the option but no longer applies it (lost in a 2025 refactor), which
    docs/kohya_differences.md lists.
  * custom_attributes (subset option): kohya reads `diff_output_preservation = true`: for those
    samples the target is the base model's own prediction (the network at multiplier 0) on the same
    noisy latents and conditioning, so the LoRA learns to leave such prompts unchanged. Other keys
    are carried as kohya does and not used.
"""
from __future__ import annotations

import torch

PRESERVATION = "diff_output_preservation"


def dataset_multipliers(specs) -> list[float] | None:
    """One multiplier per dataset, or None when every dataset trains at 1.0 (nothing to switch)."""
    values = [float(spec.network_multiplier) for spec in specs]
    return None if all(v == 1.0 for v in values) else values


def unused_attribute_keys(specs) -> list[str]:
    keys = {key for spec in specs for subset in spec.subsets for key in (subset.custom_attributes or {})}
    return sorted(keys - {PRESERVATION})


def preservation_rows(items, indices) -> list[int]:
    """Rows of the batch whose subset asks for differential output preservation."""
    return [row for row, index in enumerate(indices)
            if (items[index].subset.custom_attributes or {}).get(PRESERVATION)]


def preserved_target(network, multiplier: float, target: torch.Tensor, rows: list[int], predict) -> torch.Tensor:
    """`target` with `rows` replaced by `predict(rows)` computed with the network switched off.

    As kohya, without autograd: the prior is a constant target. With a text-encoder LoRA (or pivotal
    rows) its conditioning carries gradients, which must not flow into the target, and no UNet graph
    is kept for it."""
    network.set_multiplier(0.0)
    try:
        with torch.no_grad():
            prior = predict(rows).detach()
    finally:
        network.set_multiplier(multiplier)
    target = target.detach().clone()
    target[rows] = prior.to(target.dtype)
    return target
