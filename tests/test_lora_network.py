"""networks.lora on the tiny model: diffusers' own loader agrees, merge == unmerged, multiplier 0 == base."""
from __future__ import annotations

import copy

import pytest
import torch
from safetensors import safe_open

from networks import lora
from tests.lora_fixtures import randomise_network, te_out, token_ids, unet_inputs, unet_out


def _network(model, **args):
    network = lora.create_network(1.0, 4, 2.0, model.vae, model.text_encoders, model.unet, **args)
    network.apply_to(model.text_encoders, model.unet, True, True)
    randomise_network(network, seed=1)
    return network


@pytest.fixture
def locon_file(tiny_sdxl, tmp_path):
    """(model with an applied LoCon network incl. text encoders, network, saved file)."""
    network = _network(tiny_sdxl, conv_dim="8", conv_alpha="4")
    path = tmp_path / "locon.safetensors"
    network.save_weights(path, torch.float32, {"ss_network_module": "networks.lora"})
    return tiny_sdxl, network, path


def test_diffusers_load_lora_weights_matches_our_network(locon_file, tiny_diffusers_dir):
    from diffusers import StableDiffusionXLPipeline

    model, network, path = locon_file
    inputs, ids = unet_inputs(), token_ids()
    pipe = StableDiffusionXLPipeline.from_pretrained(str(tiny_diffusers_dir), local_files_only=True)
    base_unet = unet_out(pipe.unet, inputs)
    base_te1, base_te2 = te_out(pipe.text_encoder, ids), te_out(pipe.text_encoder_2, ids)
    pipe.load_lora_weights(str(path))

    ours_unet = unet_out(model.unet, inputs)
    theirs_unet = unet_out(pipe.unet, inputs)
    # The LoRA must matter, or agreeing would prove nothing.
    assert (ours_unet - base_unet).abs().max() > 1e-2
    torch.testing.assert_close(theirs_unet, ours_unet, rtol=1e-4, atol=1e-4)
    for ours_te, pipe_te, base in ((model.text_encoder1, pipe.text_encoder, base_te1),
                                   (model.text_encoder2, pipe.text_encoder_2, base_te2)):
        ours, theirs = te_out(ours_te, ids), te_out(pipe_te, ids)
        assert (ours - base).abs().max() > 1e-2
        torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)
    # Every module in the file was loaded by diffusers (none silently dropped).
    with safe_open(str(path), "pt") as handle:
        n_modules = len({k.split(".")[0] for k in handle.keys()})
    from peft.tuners.lora import LoraLayer

    loaded = sum(isinstance(m, LoraLayer) for c in (pipe.unet, pipe.text_encoder, pipe.text_encoder_2)
                 for m in c.modules())
    assert loaded == n_modules == len(network.loras)


def test_merge_to_equals_unmerged_forward(locon_file, _tiny_sdxl_loaded):
    model, network, path = locon_file
    inputs, ids = unet_inputs(seed=3), token_ids(seed=3)
    want_unet, want_te = unet_out(model.unet, inputs), te_out(model.text_encoder2, ids)

    fresh = copy.deepcopy(_tiny_sdxl_loaded)
    merged, weights_sd = lora.create_network_from_weights(1.0, str(path), fresh.vae, fresh.text_encoders, fresh.unet)
    assert len(merged.loras) == len(network.loras)
    merged.merge_to(fresh.text_encoders, fresh.unet, weights_sd, torch.float32, "cpu")
    torch.testing.assert_close(unet_out(fresh.unet, inputs), want_unet, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(te_out(fresh.text_encoder2, ids), want_te, rtol=1e-4, atol=1e-4)


def test_multiplier_zero_is_exactly_base(tiny_sdxl, _tiny_sdxl_loaded):
    inputs, ids = unet_inputs(seed=4), token_ids(seed=4)
    base_unet = unet_out(_tiny_sdxl_loaded.unet, inputs)
    base_te = te_out(_tiny_sdxl_loaded.text_encoder1, ids)
    network = _network(tiny_sdxl, conv_dim="4")
    assert not torch.equal(unet_out(tiny_sdxl.unet, inputs), base_unet)
    network.set_multiplier(0.0)
    assert torch.equal(unet_out(tiny_sdxl.unet, inputs), base_unet)
    assert torch.equal(te_out(tiny_sdxl.text_encoder1, ids), base_te)
    network.set_multiplier(0.5)
    half = unet_out(tiny_sdxl.unet, inputs)
    network.set_multiplier(1.0)
    full = unet_out(tiny_sdxl.unet, inputs)
    assert (half - base_unet).abs().max() < (full - base_unet).abs().max()


def test_load_weights_round_trip_and_save_precision(locon_file, _tiny_sdxl_loaded, tmp_path):
    model, network, path = locon_file
    fresh = copy.deepcopy(_tiny_sdxl_loaded)
    other = lora.create_network(1.0, 4, 2.0, None, fresh.text_encoders, fresh.unet, conv_dim="8", conv_alpha="4")
    other.load_weights(str(path))
    for key, value in network.state_dict().items():
        assert torch.equal(other.state_dict()[key], value), key
    half = tmp_path / "half.safetensors"
    network.save_weights(half, torch.bfloat16, {})
    with safe_open(str(half), "pt") as handle:
        dtypes = {handle.get_tensor(k).dtype for k in handle.keys()}
        meta = handle.metadata()
    assert dtypes == {torch.bfloat16}
    assert len(meta["sshs_model_hash"]) == 64 and len(meta["sshs_legacy_hash"]) == 8


def test_max_norm_regularisation_caps_every_delta(tiny_sdxl):
    from library.lora.weights_math import delta_weight

    network = _network(tiny_sdxl)
    norms = [delta_weight(lo.key_group(), lo.org_module[0].weight.shape).norm().item() for lo in network.loras]
    cap = sorted(norms)[len(norms) // 2]  # half the modules exceed it
    scaled, mean_norm, max_norm = network.apply_max_norm_regularization(cap, "cpu")
    after = [delta_weight(lo.key_group(), lo.org_module[0].weight.shape).norm().item() for lo in network.loras]
    assert scaled == sum(n > cap for n in norms)
    assert max(after) <= cap * (1 + 1e-5)
    assert max_norm == pytest.approx(max(after), rel=1e-5)
    assert mean_norm == pytest.approx(sum(after) / len(after), rel=1e-5)


@pytest.mark.parametrize("kind", ["linear", "conv1x1", "conv3x3"])
def test_scaled_up_weight_gives_the_plain_formula_and_its_gradients(kind):
    """The factor alpha/r * multiplier is applied to lora_up's weight, not to the full-size output:
    same output and gradients (down, up and input) as org(x) + up(down(x)) * alpha/r * multiplier."""
    import torch

    from library.lora.modules import LoRAModule

    torch.manual_seed(0)
    if kind == "linear":
        org, x = torch.nn.Linear(32, 48), torch.randn(2, 5, 32)
    else:
        size = 1 if kind == "conv1x1" else 3
        org, x = torch.nn.Conv2d(16, 24, size, padding=size // 2), torch.randn(2, 16, 6, 6)
    lora = LoRAModule("m", org, multiplier=0.7, lora_dim=4, alpha=2.0)
    torch.nn.init.normal_(lora.lora_up.weight)  # not the zero initialisation: every term counts
    lora.apply_to()
    grads = []
    for fused in (True, False):
        for p in (*lora.parameters(), x):
            p.grad = None
        x.requires_grad_(True)
        out = org(x) if fused else lora.org_forward(x) + lora.lora_up(lora.lora_down(x)) * (lora.scale * 0.7)
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        grads.append([out.detach(), lora.lora_down.weight.grad, lora.lora_up.weight.grad, x.grad])
    for fused, plain in zip(*grads):
        torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-5)  # fp32 rounding order only
