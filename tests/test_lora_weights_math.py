"""library.lora.weights_math reproduces LyCORIS for LoRA, LoCon (incl. Tucker), LoHa, LoKr and DoRA.

The reference is LyCORIS' own module: its merged weight (get_merged_weight) where alpha == rank,
and its forward output where alpha != rank. (LyCORIS 4.1.3's get_merged_weight applies alpha/rank
twice for LoHa and LoKr while its forward, ComfyUI and A1111 apply it once, so the merged weight
is only a reference at scale 1.)
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from lycoris.modules import LohaModule, LokrModule, LoConModule
from library.lora.weights_math import apply_group, delta_weight, detect_algo
from tests.lora_fixtures import quiet_lycoris_logging

quiet_lycoris_logging()

CASES = [
    # id, module class, layer, rank, extra kwargs, expected key
    ("lora-linear", LoConModule, lambda: nn.Linear(32, 48), 4, {}, "lora_up.weight"),
    ("locon-3x3", LoConModule, lambda: nn.Conv2d(16, 24, 3, padding=1), 4, {}, "lora_up.weight"),
    ("locon-tucker", LoConModule, lambda: nn.Conv2d(16, 24, 3, padding=1), 4, {"use_tucker": True}, "lora_mid.weight"),
    ("loha-linear", LohaModule, lambda: nn.Linear(32, 48), 4, {}, "hada_w1_a"),
    ("loha-3x3", LohaModule, lambda: nn.Conv2d(16, 24, 3, padding=1), 4, {}, "hada_w2_b"),
    ("loha-tucker", LohaModule, lambda: nn.Conv2d(16, 24, 3, padding=1), 4, {"use_tucker": True}, "hada_t1"),
    ("lokr-factored", LokrModule, lambda: nn.Linear(64, 96), 2, {}, "lokr_w2_a"),
    ("lokr-both", LokrModule, lambda: nn.Linear(64, 96), 2, {"decompose_both": True}, "lokr_w1_a"),
    ("lokr-full", LokrModule, lambda: nn.Linear(64, 96), 64, {}, "lokr_w2"),
    ("lokr-3x3", LokrModule, lambda: nn.Conv2d(32, 48, 3, padding=1), 2, {}, "lokr_w2_b"),
    ("lokr-tucker", LokrModule, lambda: nn.Conv2d(32, 48, 3, padding=1), 2, {"use_tucker": True}, "lokr_t2"),
    ("dora-linear", LoConModule, lambda: nn.Linear(32, 48), 4, {"weight_decompose": True}, "dora_scale"),
    ("dora-in-axis", LoConModule, lambda: nn.Linear(32, 48), 4, {"weight_decompose": True, "wd_on_out": False},
     "dora_scale"),
    ("dora-3x3", LoConModule, lambda: nn.Conv2d(16, 24, 3, padding=1), 4, {"weight_decompose": True}, "dora_scale"),
    ("doha", LohaModule, lambda: nn.Linear(32, 48), 4, {"weight_decompose": True}, "dora_scale"),
    ("dokr", LokrModule, lambda: nn.Linear(64, 96), 2, {"weight_decompose": True}, "dora_scale"),
]


def _lycoris(cls, make_layer, rank, alpha, kwargs, seed=0):
    torch.manual_seed(seed)
    layer = make_layer()
    module = cls("x", layer, 1.0, rank, alpha, **kwargs)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name == "dora_scale":  # a magnitude that differs from ||W|| so DoRA is visible
                param.mul_(1 + 0.2 * torch.rand_like(param))
            else:
                param.copy_(torch.randn_like(param) * 0.2)
    group = {k: v.detach().clone() for k, v in module.state_dict().items()}
    return layer, module, group


def _run(layer, weight, x):
    if isinstance(layer, nn.Linear):
        return nn.functional.linear(x, weight, layer.bias)
    return nn.functional.conv2d(x, weight, layer.bias, padding=layer.padding)


def _input(layer):
    if isinstance(layer, nn.Linear):
        return torch.randn(2, layer.in_features)
    return torch.randn(2, layer.in_channels, 8, 8)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_merged_weight_matches_lycoris_at_scale_one(case):
    _, cls, make_layer, rank, kwargs, key = case
    layer, module, group = _lycoris(cls, make_layer, rank, rank, kwargs)
    assert key in group
    base = layer.weight.detach().clone()
    want, _ = module.get_merged_weight(1.0, shape=base.shape)
    got = apply_group(base, group, 1.0)
    assert (want - base).abs().max() > 1e-2  # the adapter really changes the weight
    torch.testing.assert_close(got, want.detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_forward_matches_lycoris_with_alpha_not_rank(case):
    _, cls, make_layer, rank, kwargs, _ = case
    layer, module, group = _lycoris(cls, make_layer, rank, rank / 2, kwargs, seed=1)
    base = layer.weight.detach().clone()
    x = _input(layer)
    module.apply_to()
    with torch.no_grad():
        want = layer(x)
        got = _run(layer, apply_group(base, group, 1.0), x)
        assert (want - _run(layer, base, x)).abs().max() > 1e-2
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_strength_scales_linear_deltas_and_zero_is_identity():
    layer, _, group = _lycoris(LohaModule, lambda: nn.Linear(32, 48), 4, 2.0, {})
    base = layer.weight.detach().clone()
    delta = delta_weight(group, base.shape)
    torch.testing.assert_close(apply_group(base, group, 0.5), base + 0.5 * delta)
    assert torch.equal(apply_group(base, group, 0.0), base)
    assert detect_algo(group) == "loha"


def test_peft_style_dora_magnitude_vector_is_per_output_row():
    layer, module, group = _lycoris(LoConModule, lambda: nn.Linear(32, 48), 4, 4, {"weight_decompose": True})
    flat = dict(group, dora_scale=group["dora_scale"].reshape(-1))  # PEFT's lora_magnitude_vector is [out]
    want = module.get_merged_weight(1.0, shape=layer.weight.shape)[0].detach()
    torch.testing.assert_close(apply_group(layer.weight.detach(), flat), want, rtol=1e-5, atol=1e-5)
