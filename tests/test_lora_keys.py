"""LoRA key names and file contents: golden module lists, literal names, real-SDXL counts, loading
of other naming styles, unmapped keys, output file names."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from library.errors import UserError
from library.lora.file_io import load_lora_for_model, output_file_name
from library.lora.naming import ModelNames
from networks import lora

GOLDEN = Path(__file__).parent / "golden"


def _lines(network) -> list[str]:
    return sorted(f"{lo.lora_name} {tuple(lo.lora_down.weight.shape)} {tuple(lo.lora_up.weight.shape)}"
                  for lo in network.loras)


@pytest.mark.parametrize("golden, args", [("lora_tiny_lierla.txt", {}), ("lora_tiny_c3lier.txt", {"conv_dim": "4"})])
def test_tiny_module_names_match_golden_list(_tiny_sdxl_loaded, golden, args):
    model = _tiny_sdxl_loaded  # creating a network without apply_to leaves the model untouched
    network = lora.create_network(1.0, 4, 1, None, model.text_encoders, model.unet, **args)
    assert _lines(network) == (GOLDEN / golden).read_text().splitlines()


def test_saved_keys_literal_names_and_shapes(tiny_sdxl, tmp_path):
    model = tiny_sdxl
    network = lora.create_network(1.0, 4, 2, None, model.text_encoders, model.unet, conv_dim="8", conv_alpha="3")
    path = tmp_path / "k.safetensors"
    network.save_weights(path, None, {})
    with safe_open(str(path), "pt") as handle:
        keys = set(handle.keys())
        get = handle.get_tensor
        assert all(k.startswith(("lora_unet_", "lora_te1_", "lora_te2_")) for k in keys)
        assert not any(k.startswith(("lora_te1_encoder", "lora_unet_down_blocks", "lora_unet_up_blocks")) for k in keys)
        for name in ("lora_te1_text_model_encoder_layers_0_self_attn_q_proj",
                     "lora_te2_text_model_encoder_layers_2_mlp_fc2",
                     "lora_unet_input_blocks_4_1_proj_in",
                     "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
                     "lora_unet_middle_block_1_proj_in",
                     "lora_unet_output_blocks_2_2_conv",
                     "lora_unet_input_blocks_4_0_emb_layers_1",
                     "lora_unet_input_blocks_4_0_skip_connection",
                     "lora_unet_input_blocks_3_0_op"):
            assert {f"{name}.lora_down.weight", f"{name}.lora_up.weight", f"{name}.alpha"} <= keys, name
        # SDXL upsampler at output_blocks_2_2 (level with attention): a 3x3 conv at conv_dim.
        assert tuple(get("lora_unet_output_blocks_2_2_conv.lora_down.weight").shape) == (8, 128, 3, 3)
        assert tuple(get("lora_unet_output_blocks_2_2_conv.lora_up.weight").shape) == (128, 8, 1, 1)
        assert float(get("lora_unet_output_blocks_2_2_conv.alpha")) == 3.0
        # emb_layers_1 and skip_connection get network_dim, as in kohya.
        assert get("lora_unet_input_blocks_4_0_emb_layers_1.lora_down.weight").shape[0] == 4
        assert get("lora_unet_input_blocks_4_0_skip_connection.lora_down.weight").shape == (4, 32, 1, 1)
        alpha = get("lora_te1_text_model_encoder_layers_0_self_attn_q_proj.alpha")
        assert alpha.dim() == 0 and float(alpha) == 2.0
        assert torch.count_nonzero(get("lora_unet_input_blocks_4_1_proj_in.lora_up.weight")) == 0  # up = zeros
        assert get("lora_unet_input_blocks_4_1_proj_in.lora_down.weight").abs().sum() > 0


def test_real_sdxl_config_has_722_unet_and_264_text_encoder_modules():
    from library.models.model_build import empty_text_encoder, empty_unet
    from library.models.sdxl_architecture import SDXL_TE1_CONFIG, SDXL_TE2_CONFIG, SDXL_UNET_CONFIG

    unet = empty_unet(SDXL_UNET_CONFIG)
    tes = [empty_text_encoder(SDXL_TE1_CONFIG, False), empty_text_encoder(SDXL_TE2_CONFIG, True)]
    network = lora.create_network(1.0, 1, 1, None, tes, unet)
    assert (len(network.unet_loras), len(network.text_encoder_loras)) == (722, 264)
    assert sum(lo.lora_name.startswith("lora_te1_") for lo in network.text_encoder_loras) == 72
    c3lier = lora.create_network(1.0, 1, 1, None, tes, unet, conv_dim="1")
    # + 17 resnets x (conv1, conv2, time_emb_proj) + 11 conv_shortcut + 2 down- and 2 upsamplers
    assert len(c3lier.unet_loras) == 722 + 17 * 3 + 11 + 4


def _file_of(network) -> dict:
    from tests.lora_fixtures import randomise_network

    randomise_network(network, seed=2)
    return {k: v.clone() for k, v in network.state_dict().items()}


def test_loading_accepts_diffusers_style_and_peft_names(tiny_sdxl, tmp_path):
    model = tiny_sdxl
    network = lora.create_network(1.0, 4, 4, None, model.text_encoders, model.unet, conv_dim="4", conv_alpha="4")
    canonical = _file_of(network)
    names = network.names
    diffusers_style, peft = {}, {}
    for key, value in canonical.items():
        module, _, suffix = key.partition(".")
        ref = names.ref(module)
        if ref.component == "unet":
            diffusers_style[f"lora_unet_{ref.path.replace('.', '_')}.{suffix}"] = value
        else:  # text encoders without the text_model level (what naive tools write)
            diffusers_style[key.replace("_text_model_", "_", 1)] = value
        if suffix != "alpha":  # alpha == rank: PEFT files carry no alpha
            component = {"unet": "unet", "te1": "text_encoder", "te2": "text_encoder_2"}[ref.component]
            peft_suffix = {"lora_down.weight": "lora_A.weight", "lora_up.weight": "lora_B.weight"}[suffix]
            peft[f"{component}.{ref.path}.{peft_suffix}"] = value
    assert any(k.startswith("lora_unet_down_blocks_1_attentions_0") for k in diffusers_style)
    assert any(k.startswith("lora_te1_encoder_layers_0") for k in diffusers_style)
    for variant in (diffusers_style, peft):
        path = tmp_path / "variant.safetensors"
        save_file(variant, str(path))
        loaded, _ = load_lora_for_model(path, names)
        expected = canonical if variant is diffusers_style else {k: v for k, v in canonical.items()
                                                                 if not k.endswith("alpha")}
        assert loaded.keys() == expected.keys()
        assert all(torch.equal(loaded[k], expected[k]) for k in expected)


def test_unmapped_and_mixed_style_keys_are_listed(_tiny_sdxl_loaded):
    names = ModelNames(_tiny_sdxl_loaded.unet, _tiny_sdxl_loaded.text_encoders)
    t = torch.zeros(4, 64)
    bad = {"lora_unet_input_blocks_4_1_proj_in.lora_down.weight": t,
           "lora_unet_no_such_module.lora_down.weight": t,
           "lora_te3_text_model_x.lora_down.weight": t}
    with pytest.raises(UserError) as info:
        load_lora_for_model(bad, names)
    assert "lora_unet_no_such_module.lora_down.weight" in str(info.value)
    assert "lora_te3_text_model_x.lora_down.weight" in str(info.value)
    assert "2 keys" in str(info.value)
    mixed = {"lora_unet_input_blocks_4_1_proj_in.lora_down.weight": t,
             "lora_unet_down_blocks_1_attentions_0_proj_in.lora_down.weight": t}
    with pytest.raises(UserError, match="down_blocks_1_attentions_0_proj_in"):
        load_lora_for_model(mixed, names)


def test_output_file_names():
    assert output_file_name("mylora") == "mylora.safetensors"
    assert output_file_name("mylora", epoch=1) == "mylora-000001.safetensors"
    assert output_file_name("mylora", step=500) == "mylora-step00000500.safetensors"


@pytest.mark.parametrize("args, message", [
    ({"conv_dimm": "4"}, "conv_dimm"),
    ({"conv_dim": "four"}, "conv_dim"),
    ({"block_dims": "1,2,3"}, "block_dims"),
    ({"down_lr_weight": "sinus"}, "down_lr_weight"),
    ({"rank_dropout": "1.5"}, "rank_dropout"),
    ({"loraplus_lr_ratio": "x"}, "loraplus_lr_ratio"),
])
def test_unknown_or_malformed_network_args_name_the_arg(_tiny_sdxl_loaded, args, message):
    model = _tiny_sdxl_loaded
    with pytest.raises(UserError, match=message):
        lora.create_network(1.0, 4, 1, None, model.text_encoders, model.unet, **args)
