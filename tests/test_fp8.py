"""fp8_base / fp8_base_unet: fp8 weights upcast per layer, a quarter of the fp32 UNet's bytes, a loss
close to the bf16 run's, and an estimate that knows."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from library.training.residency.fp8_weights import FP8, Fp8Conv2d, Fp8Linear, store_in_fp8, weight_bytes
from tests.test_train_run import logged
from tests.training_fixtures import base_config, make_concept_images, train_in_process, write_config


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("fp8_data")
    make_concept_images(root / "1_catwomen", count=2, sizes=[(32, 32)])
    return root


def _saved_bytes(fn) -> int:
    """Bytes autograd keeps for backward while `fn` runs (a new storage counts once)."""
    seen = {}

    def pack(tensor):
        seen[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())


@pytest.mark.parametrize("make, shape", [(lambda: nn.Linear(96, 48), (4, 96)), (lambda: nn.Conv2d(8, 16, 3, padding=1), (2, 8, 12, 12))])
def test_fp8_layer_upcasts_per_layer_and_keeps_only_its_fp8_weight_for_backward(make, shape):
    torch.manual_seed(0)
    reference = make().requires_grad_(False)
    layer = make()
    layer.load_state_dict(reference.state_dict())
    layer.requires_grad_(False)
    store_in_fp8(layer, "cpu", torch.bfloat16)
    assert isinstance(layer, (Fp8Linear, Fp8Conv2d)) and layer.weight.dtype == FP8 and layer.bias.dtype == torch.bfloat16
    assert weight_bytes(layer) < weight_bytes(reference) / 3

    x = torch.randn(shape, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = reference(x)
        out, saved = _saved_bytes(lambda: layer(x))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected.float(), rtol=0, atol=0.08 * float(expected.detach().abs().max()))
    assert saved <= layer.weight.numel() + 4 * layer.weight.shape[0] + 64  # the fp8 weight and its scales, no activation
    grad = torch.randn_like(out)
    (ours,) = torch.autograd.grad(out, x, grad)
    (theirs,) = torch.autograd.grad(expected, x, grad)
    torch.testing.assert_close(ours.float(), theirs.float(), rtol=0, atol=0.08 * float(theirs.abs().max()))


def test_fp8_base_trains_with_a_quarter_of_the_unet_bytes_and_a_loss_close_to_bf16(tiny_single_file, images, tmp_path):
    common = dict(resolution="32,32", min_bucket_reso=32, max_bucket_reso=64, train_batch_size=1, max_train_steps=2,
                  mixed_precision="bf16", log_with="tensorboard", network_train_unet_only=True)
    reference, _ = train_in_process(tmp_path, tiny_single_file, images, "bf16", logging_dir=str(tmp_path / "l_bf16"), **common)
    fp8, lora = train_in_process(tmp_path, tiny_single_file, images, "fp8", logging_dir=str(tmp_path / "l_fp8"), fp8_base=True,
                                 **common)
    from library.models.sdxl_loader import load_sdxl

    fp32_bytes = weight_bytes(load_sdxl(tiny_single_file).unet)
    assert weight_bytes(reference.model.unet) == pytest.approx(fp32_bytes / 2, rel=0.01)
    assert weight_bytes(fp8.model.unet) == pytest.approx(fp32_bytes / 4, rel=0.03)
    placed = {e.component: e.dtypes for e in fp8.placement.where("place")}
    # fp8 weights, their float32 per-channel scales, everything else in bf16
    assert placed["unet"] == placed["text_encoder1"] == ("bfloat16", "float32", "float8_e4m3fn") and placed["vae"] == ("bfloat16",)
    losses = [v for _, v in logged(tmp_path / "l_fp8", "loss/current")]
    expected = [v for _, v in logged(tmp_path / "l_bf16", "loss/current")]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert losses == pytest.approx(expected, rel=0.05)
    from tests.training_fixtures import lora_tensors

    trained = lora_tensors(lora)
    assert any(v.abs().sum() > 0 for k, v in trained.items() if "lora_up" in k)


def test_fp8_with_lycoris_uses_bypass_mode(tiny_single_file, images, tmp_path):
    trainer, lora = train_in_process(tmp_path, tiny_single_file, images, "loha", resolution="32,32", min_bucket_reso=32,
                                     max_bucket_reso=64, train_batch_size=1, max_train_steps=2, mixed_precision="bf16",
                                     fp8_base_unet=True, network_module="lycoris.kohya",
                                     network_args=["algo=loha", "preset=attn-mlp"], network_train_unet_only=True)
    assert all(module.bypass_mode for module in trainer.network.unet_loras)
    assert lora.exists()


def test_estimate_memory_counts_fp8_weights(tiny_single_file, images, tmp_path):
    from library.training.config.config_loader import resolve_config
    from library.training.memory.memory_estimate import estimate_memory

    def estimate(**options):
        config = base_config(tiny_single_file, images, tmp_path / "out", mixed_precision="bf16", **options)
        path = write_config(tmp_path / f"e{len(options)}.toml", config)
        return estimate_memory(resolve_config(["--config_file", str(path)]).args)

    plain, fp8 = estimate(), estimate(fp8_base_unet=True)
    from library.models.sdxl_loader import load_sdxl

    model = load_sdxl(tiny_single_file)
    unet_bf16 = weight_bytes(model.unet) / 2
    # the UNet's share halves again (bf16 -> fp8); nothing else changes
    assert plain.base_weights - fp8.base_weights == pytest.approx(unet_bf16 / 2, rel=0.05)
    assert "fp8 UNet" in "\n".join(fp8.lines())


def test_base_weights_merge_into_fp32_weights_before_fp8_storage(tiny_single_file, images, tmp_path):
    """base_weights are merged into the loaded fp32 weights; fp8 storage then quantizes the merged ones."""
    from library.lora.merge import merge_base_weights
    from library.models.sdxl_loader import load_sdxl
    from library.training.residency.fp8_weights import dequantize, quantize
    from networks import lora

    model = load_sdxl(tiny_single_file)
    network = lora.create_network(1.0, 4, 4.0, model.vae, model.text_encoders, model.unet)
    torch.manual_seed(3)
    for module in network.unet_loras:
        nn.init.normal_(module.lora_up.weight, std=0.05)
    base = tmp_path / "base.safetensors"
    network.save_weights(str(base), None, {})

    trainer, _ = train_in_process(tmp_path, tiny_single_file, images, "merged", resolution="32,32", min_bucket_reso=32,
                                  max_bucket_reso=64, train_batch_size=1, max_train_steps=1, mixed_precision="bf16",
                                  fp8_base_unet=True, base_weights=[str(base)], network_train_unet_only=True)
    expected = load_sdxl(tiny_single_file)
    merge_base_weights([str(base)], [1.0], expected.unet, expected.text_encoders, log=lambda *_: None)
    name = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    layer = trainer.model.unet.get_submodule(name)
    reference = expected.unet.get_submodule(name).weight
    assert not torch.equal(reference, load_sdxl(tiny_single_file).unet.get_submodule(name).weight)  # the merge changed it
    stored, scale = quantize(reference, "cpu")
    assert torch.equal(layer.weight.view(torch.uint8), stored.view(torch.uint8)) and torch.equal(layer.weight_scale, scale)
    torch.testing.assert_close(dequantize(layer.weight, layer.weight_scale, torch.float32), reference, rtol=0.07, atol=1e-3)


def test_fp8_scale_stays_float32_under_fp16():
    """amax / 448 of a small layer is subnormal in fp16 (below amax ~0.027): the scale must stay fp32."""
    from library.training.residency.fp8_weights import dequantize, store_in_fp8

    torch.manual_seed(0)
    layer = nn.Sequential(nn.Linear(64, 32))
    with torch.no_grad():
        layer[0].weight.mul_(0.0005 / layer[0].weight.abs().max())  # amax 5e-4: scale 1.1e-6, fp16 subnormal
    layer.requires_grad_(False)
    reference = layer[0].weight.detach().clone()
    store_in_fp8(layer, "cpu", torch.float16)
    assert layer[0].weight_scale.dtype == torch.float32
    rebuilt = dequantize(layer[0].weight, layer[0].weight_scale, torch.float32)
    relative = ((rebuilt - reference).abs().max() / reference.abs().max()).item()
    assert relative < 0.07  # fp8's own rounding (3 mantissa bits); an fp16 scale here was off by up to ~2x
    fp16_scale = layer[0].weight_scale.half().float()
    assert ((fp16_scale - layer[0].weight_scale).abs() / layer[0].weight_scale).max() > 0.001  # what fp16 would have lost
