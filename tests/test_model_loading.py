"""SDXL loading: diffusers folder vs single file, diffusers' own reader, round trips, real-SDXL shapes."""
from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from library.models import sdxl_architecture as arch
from library.models.model_build import empty_text_encoder, empty_unet, empty_vae
from library.models.sdxl_loader import load_sdxl
from library.models.sdxl_single_file import checkpoint_state_dict
from library.models.text_encoder_names import TE2_PREFIX

COMPONENTS = ("unet", "text_encoder1", "text_encoder2", "vae")


@pytest.fixture(scope="module")
def from_diffusers(tiny_diffusers_dir):
    return load_sdxl(tiny_diffusers_dir)


@pytest.fixture(scope="module")
def from_single_file(tiny_single_file):
    return load_sdxl(tiny_single_file)


def _assert_same_state(module_a, module_b):
    state_a, state_b = module_a.state_dict(), module_b.state_dict()
    assert state_a.keys() == state_b.keys()
    different = [k for k in state_a if not torch.equal(state_a[k], state_b[k])]
    assert different == []


@pytest.mark.parametrize("component", COMPONENTS)
def test_both_layouts_load_identical_tensors(from_diffusers, from_single_file, component):
    _assert_same_state(getattr(from_diffusers, component), getattr(from_single_file, component))


def _sdxl_conditioning(model, prompt="a photo of a cat"):
    hidden, pooled = [], None
    for tokenizer, encoder in zip(model.tokenizers, model.text_encoders):
        ids = tokenizer(prompt, padding="max_length", max_length=77, return_tensors="pt").input_ids
        out = encoder(ids, output_hidden_states=True)
        hidden.append(out.hidden_states[-2])
        if hasattr(out, "text_embeds"):
            pooled = out.text_embeds
    return torch.cat(hidden, dim=-1), pooled


@torch.no_grad()
def test_outputs_match_between_layouts(from_diffusers, from_single_file):
    outputs = []
    for model in (from_diffusers, from_single_file):
        context, pooled = _sdxl_conditioning(model)
        assert context.shape == (1, 77, 64 + 128) and pooled.shape == (1, 128)
        generator = torch.Generator().manual_seed(0)
        latents = torch.randn(1, 4, 8, 8, generator=generator)
        time_ids = torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]])
        unet_out = model.unet(latents, 500, context, added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
        image = torch.rand(1, 3, 64, 64, generator=generator) * 2 - 1
        posterior = model.vae.encode(image).latent_dist.mean
        decoded = model.vae.decode(posterior).sample
        outputs.append((context, pooled, unet_out, posterior, decoded))
    # The weights are bit-identical (tested above); outputs may differ in the last bit because the
    # GEMM kernel chosen depends on the weights' memory alignment (mmapped diffusers shards vs
    # tensors read from one file): 1e-6 seen on AMX machines.
    for a, b in zip(*outputs):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert outputs[0][2].abs().sum() > 0  # the UNet really computed something


def test_diffusers_from_single_file_reads_our_file_identically(tiny_single_file, tiny_diffusers_dir, from_single_file):
    """diffusers' own converter is an independent check of our key mapping."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_single_file(
        str(tiny_single_file), config=str(tiny_diffusers_dir), local_files_only=True, torch_dtype=torch.float32
    )
    pairs = [("unet", "unet"), ("text_encoder1", "text_encoder"), ("text_encoder2", "text_encoder_2"), ("vae", "vae")]
    for ours, theirs in pairs:
        _assert_same_state(getattr(from_single_file, ours), getattr(pipe, theirs))


def test_single_file_save_load_round_trip_is_bit_exact(tiny_single_file, from_single_file, tmp_path):
    out = tmp_path / "resaved.safetensors"
    from_single_file.save_single_file(out)
    original, resaved = load_file(str(tiny_single_file)), load_file(str(out))
    assert original.keys() == resaved.keys()
    assert all(torch.equal(original[k], resaved[k]) and original[k].dtype == resaved[k].dtype for k in original)
    assert TE2_PREFIX + "logit_scale" in resaved


def test_diffusers_folder_to_single_file_equals_tiny_file(from_diffusers, tiny_single_file, tmp_path):
    out = tmp_path / "from_diffusers.safetensors"
    from_diffusers.save_single_file(out)
    original, converted = load_file(str(tiny_single_file)), load_file(str(out))
    assert original.keys() == converted.keys()
    assert all(torch.equal(original[k], converted[k]) for k in original)


def test_save_precision_and_ckpt_loading(from_single_file, tmp_path):
    half = tmp_path / "half.safetensors"
    from_single_file.save_single_file(half, dtype=torch.float16)
    tensors = load_file(str(half))
    assert {v.dtype for v in tensors.values()} == {torch.float16}
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": load_file(str(half))}, ckpt)
    loaded = load_sdxl(ckpt)
    reference = load_sdxl(half)
    _assert_same_state(loaded.unet, reference.unet)


def test_real_sdxl_configuration_is_inferred_from_shapes():
    """Meta-device SDXL -> original layout -> inferred configs -> SDXL's parameter counts."""
    models = (
        empty_unet(arch.SDXL_UNET_CONFIG),
        empty_text_encoder({**arch.SDXL_TE1_CONFIG, **arch.CLIP_TOKEN_IDS}, with_projection=False),
        empty_text_encoder({**arch.SDXL_TE2_CONFIG, **arch.CLIP_TOKEN_IDS}, with_projection=True),
        empty_vae(arch.SDXL_VAE_CONFIG),
    )
    shapes = {k: tuple(v.shape) for k, v in checkpoint_state_dict(*models).items()}
    groups = arch.split_checkpoint_shapes(shapes)
    unet_config = arch.infer_unet_config(groups["unet"])
    for key, value in arch.SDXL_UNET_CONFIG.items():
        assert unet_config[key] == value or list(unet_config[key]) == list(value), key
    te1_config, te2_config = arch.infer_te1_config(groups["te1"]), arch.infer_te2_config(groups["te2"])
    for inferred, real in ((te1_config, arch.SDXL_TE1_CONFIG), (te2_config, arch.SDXL_TE2_CONFIG)):
        assert {k: inferred[k] for k in real} == real
    vae_config = arch.infer_vae_config(groups["vae"])
    assert {k: vae_config[k] for k in arch.SDXL_VAE_CONFIG} == arch.SDXL_VAE_CONFIG

    def count(module):
        return sum(p.numel() for p in module.parameters())

    assert count(empty_unet(unet_config)) == 2_567_463_684
    assert count(empty_text_encoder(te1_config, False)) == 123_060_480
    assert count(empty_text_encoder(te2_config, True)) == 694_659_840
    assert len(shapes) == 2514  # SAI's file has 2515: the same plus TE1's position_ids buffer


@torch.no_grad()
def test_text_projection_follows_openclip_convention(tiny_single_file, from_single_file):
    """OpenCLIP pools with x @ P; the HF Linear must compute the same from the stored P."""
    projection = load_file(str(tiny_single_file))[TE2_PREFIX + "text_projection"]
    assert projection.shape == (128, 128)
    x = torch.randn(3, 128, generator=torch.Generator().manual_seed(1))
    expected = x @ projection
    actual = from_single_file.text_encoder2.text_projection(x)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(actual, x @ projection.t(), atol=1e-3)  # the transpose matters


def test_logit_scale_default_is_ln_100(tiny_single_file):
    assert math.isclose(load_file(str(tiny_single_file))[TE2_PREFIX + "logit_scale"].item(), math.log(100), rel_tol=1e-6)


def test_tiny_model_is_deterministic_for_a_seed():
    from library.models.tiny_sdxl import build_tiny_components

    first, second, other = build_tiny_components(3), build_tiny_components(3), build_tiny_components(4)
    for a, b in zip(first, second):
        _assert_same_state(a, b)
    assert not torch.equal(first[0].conv_in.weight, other[0].conv_in.weight)


def test_tiny_model_has_sdxl_structure(from_single_file):
    unet = from_single_file.unet
    assert unet.config.addition_embed_type == "text_time"
    assert [type(b).__name__ for b in unet.down_blocks] == ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"]
    assert len(unet.down_blocks[2].attentions[0].transformer_blocks) == 2
    assert unet.config.cross_attention_dim == from_single_file.text_encoder1.config.hidden_size + from_single_file.text_encoder2.config.hidden_size
    assert from_single_file.text_encoder1.config.hidden_size != from_single_file.text_encoder2.config.hidden_size
    assert from_single_file.vae.config.latent_channels == 4 and len(from_single_file.vae.config.block_out_channels) == 4
    assert len(from_single_file.tokenizer1) == 49408


@pytest.mark.parametrize("layout", ["single_file", "diffusers"])
def test_components_load_straight_into_their_training_dtype(layout, tiny_single_file, tiny_diffusers_dir, from_single_file):
    """dtypes per component: each tensor converted once as it is read (bf16 here: the same values as
    loading fp32 and casting), the VAE kept in fp32 (no_half_vae)."""
    path = tiny_single_file if layout == "single_file" else tiny_diffusers_dir
    model = load_sdxl(path, dtypes={"unet": torch.bfloat16, "text_encoder": torch.float16, "vae": torch.float32})
    for module, dtype in ((model.unet, torch.bfloat16), (model.text_encoder1, torch.float16), (model.text_encoder2, torch.float16),
                          (model.vae, torch.float32)):
        assert {t.dtype for t in module.state_dict().values() if t.is_floating_point()} == {dtype}
    reference = from_single_file.unet.state_dict()
    for key, tensor in model.unet.state_dict().items():
        assert torch.equal(tensor, reference[key].to(torch.bfloat16)), key
