"""LyCORIS files that must read back everywhere (issue 15): DoRA on both axes, LoKr with Tucker
factors and decompose_both, TE2's text_projection name.

ComfyUI's and A1111's formulas are re-derived here from their source (comfy/weight_adapter/base.py
weight_decompose, comfy/weight_adapter/lokr.py; A1111 extensions-builtin/Lora/network.py
apply_weight_decompose) to check what the save note says about each consumer.
"""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from library.lora import weights_math
from networks import lycoris_kohya
from tests.lora_fixtures import token_ids
from tests.tools_fixtures import Parts, outputs, randomise_network


def comfy_dora(weight, delta, dora_scale):
    """ComfyUI's weight_decompose at strength 1 (alpha already in delta)."""
    calc = weight + delta
    if dora_scale.shape[0] == calc.shape[0]:  # "wd_on_output_axis": the norm of the *base* weight
        norm = weight.reshape(weight.shape[0], -1).norm(dim=1, keepdim=True).reshape(weight.shape[0], *[1] * (weight.dim() - 1))
    else:
        norm = calc.transpose(0, 1).reshape(calc.shape[1], -1).norm(dim=1, keepdim=True)
        norm = norm.reshape(calc.shape[1], *[1] * (calc.dim() - 1)).transpose(0, 1)
    return calc * (dora_scale / (norm + torch.finfo(weight.dtype).eps))


def a1111_dora(weight, delta, dora_scale):
    """A1111/Forge's apply_weight_decompose: always the per-input-channel norm of W + dW."""
    calc = weight + delta
    norm = calc.transpose(0, 1).reshape(calc.shape[1], -1).norm(dim=1, keepdim=True)
    return calc * (dora_scale / norm.reshape(calc.shape[1], *[1] * (calc.dim() - 1)).transpose(0, 1))


def build_and_save(model, path, **args):
    work = Parts(model)
    network = lycoris_kohya.create_network(1.0, 4, 2.0, None, work.text_encoders, work.unet, **args)
    network.apply_to(work.text_encoders, work.unet, True, True)
    initial = {n: p.detach().clone() for n, p in network.named_parameters() if n.endswith("dora_scale")}
    randomise_network(network, seed=3, std=0.05)
    with torch.no_grad():  # DoRA magnitudes near the base weight's norms, as after real training
        generator = torch.Generator().manual_seed(4)
        for n, p in network.named_parameters():
            if n in initial:
                p.copy_(initial[n] * (1 + 0.2 * torch.randn(p.shape, generator=generator)))
    network.save_weights(path, torch.float32, {})
    return outputs(work), work


def read_back(model, path):
    fresh = Parts(model)
    network, _ = lycoris_kohya.create_network_from_weights(1.0, str(path), None, fresh.text_encoders, fresh.unet)
    network.apply_to(fresh.text_encoders, fresh.unet, True, True)
    return outputs(fresh), network, fresh


@torch.no_grad()
def pooled(parts):
    """TE2's projected output, the only one text_projection changes."""
    return parts.text_encoder2(token_ids(seed=5)).text_embeds


def assert_same(got, want, base):
    for g, w, b in zip(got, want, base):
        assert (w - b).abs().max() > 1e-2  # the file has an effect
        torch.testing.assert_close(g, w, rtol=0, atol=1e-5)


@pytest.mark.parametrize("algo, wd_on_output", [("locon", None), ("locon", "True"), ("lokr", None)])
def test_dora_both_variants_read_back(algo, wd_on_output, _tiny_sdxl_loaded, tmp_path, capsys):
    args = {"algo": algo, "dora_wd": "True", "preset": "full", "conv_dim": "4", "conv_alpha": "2"}
    if wd_on_output:
        args["wd_on_output"] = wd_on_output
    path = tmp_path / "dora.safetensors"
    want, _ = build_and_save(_tiny_sdxl_loaded, path, **args)
    note = capsys.readouterr().out
    got, network, _ = read_back(_tiny_sdxl_loaded, path)
    assert_same(got, want, outputs(_tiny_sdxl_loaded))
    per_input = wd_on_output is None  # the default here: wd_on_output = False
    assert {m.wd_on_out for m in network.loras} == {not per_input}

    tensors = load_file(str(path))
    name = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"
    group = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith(name + ".")}
    base = dict(_tiny_sdxl_loaded.unet.named_parameters())["down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight"]
    assert group["dora_scale"].shape == ((1, base.shape[1]) if per_input else (base.shape[0], 1))
    ours = weights_math.apply_group(base.detach(), group)
    delta = weights_math.delta_weight(group, base.shape)
    comfy, a1111 = comfy_dora(base.detach(), delta, group["dora_scale"]), a1111_dora(base.detach(), delta, group["dora_scale"])
    if per_input:
        assert "ComfyUI, A1111/Forge and this toolkit reproduce it" in note
        torch.testing.assert_close(comfy, ours, rtol=0, atol=1e-5)
        torch.testing.assert_close(a1111, ours, rtol=0, atol=1e-5)
    else:
        assert "only LyCORIS and this toolkit reproduce it" in note
        # ComfyUI divides by ||W|| instead of ||W + dW|| (off by the norm change dW makes: ~3% of the
        # effect here, more after real training); A1111 mixes the two axes.
        effect = (ours - base).abs().max()
        assert (comfy - ours).abs().max() > 0.02 * effect and (a1111 - ours).abs().max() > 0.1 * effect


def comfy_lokr_delta(group, contiguous=False):
    """ComfyUI's LoKr weight (comfy/weight_adapter/lokr.py) incl. the Tucker einsum; with
    `contiguous` the Tucker product is made contiguous first, as A1111's make_kron does."""
    dim = None
    w1 = group.get("lokr_w1")
    if w1 is None:
        dim = group["lokr_w1_b"].shape[0]
        w1 = group["lokr_w1_a"] @ group["lokr_w1_b"]
    w2 = group.get("lokr_w2")
    if w2 is None:
        dim = group["lokr_w2_b"].shape[0]
        if "lokr_t2" in group:
            w2 = torch.einsum("i j k l, j r, i p -> p r k l", group["lokr_t2"], group["lokr_w2_b"], group["lokr_w2_a"])
        else:
            w2 = group["lokr_w2_a"] @ group["lokr_w2_b"]
    if w2.dim() == 4:
        w1 = w1[:, :, None, None]
    if contiguous:
        w2 = w2.contiguous()
    scale = float(group["alpha"]) / dim if dim is not None else 1.0
    return torch.kron(w1, w2) * scale


def test_lokr_tucker_decompose_both_reads_back(_tiny_sdxl_loaded, tmp_path, capsys):
    path = tmp_path / "lokr_tucker.safetensors"
    args = {"algo": "lokr", "use_tucker": "True", "decompose_both": "True", "preset": "full", "conv_dim": "4", "conv_alpha": "2"}
    want, _ = build_and_save(_tiny_sdxl_loaded, path, **args)
    printed = capsys.readouterr().out
    assert "network_args algo=lokr with use_tucker" in printed and "ComfyUI does not" in printed  # before training and on save
    tensors = load_file(str(path))
    tucker = sorted({k.split(".")[0] for k in tensors if k.endswith(".lokr_t2")})
    assert tucker and any(k.endswith(".lokr_w1_a") for k in tensors)
    got, _, _ = read_back(_tiny_sdxl_loaded, path)
    assert_same(got, want, outputs(_tiny_sdxl_loaded))
    # ComfyUI's einsum matches LyCORIS' Tucker layout, but its kron fails on the non-contiguous
    # product (ComfyUI logs the error and skips the module); A1111's contiguous() makes it work.
    from library.lora.naming import ModelNames

    name = "lora_unet_middle_block_0_in_layers_2"
    assert name in tucker
    group = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith(name + ".")}
    base = ModelNames(_tiny_sdxl_loaded.unet).ref(name).module.weight.detach()
    with pytest.raises(RuntimeError, match="view size is not compatible"):
        comfy_lokr_delta(group)
    torch.testing.assert_close(comfy_lokr_delta(group, contiguous=True).reshape(base.shape),
                               weights_math.delta_weight(group, base.shape), rtol=0, atol=1e-6)


def test_text_projection_name(_tiny_sdxl_loaded, tmp_path):
    preset = tmp_path / "preset.toml"
    preset.write_text('enable_conv = false\nunet_target_module = []\n'
                      'text_encoder_target_module = ["CLIPAttention"]\ntext_encoder_target_name = ["text_projection"]\n')
    path = tmp_path / "proj.safetensors"
    _, work = build_and_save(_tiny_sdxl_loaded, path, algo="lora", preset=str(preset))
    want = pooled(work)
    assert (want - pooled(Parts(_tiny_sdxl_loaded))).abs().max() > 1e-3
    tensors = load_file(str(path))
    assert "lora_te2_text_projection.lora_down.weight" in tensors  # as ComfyUI and LyCORIS name it
    assert not any("text_model_text_projection" in k for k in tensors)
    _, _, fresh = read_back(_tiny_sdxl_loaded, path)
    torch.testing.assert_close(pooled(fresh), want, rtol=0, atol=1e-5)
    old = tmp_path / "old.safetensors"  # the spelling our files had before: still accepted
    save_file({k.replace("lora_te2_text_projection", "lora_te2_text_model_text_projection"): v for k, v in tensors.items()}, str(old))
    _, _, fresh_old = read_back(_tiny_sdxl_loaded, old)
    torch.testing.assert_close(pooled(fresh_old), want, rtol=0, atol=1e-5)

    from library.lora.lora_files import read_groups

    assert "lora_te2_text_projection" in read_groups(old)[0]
