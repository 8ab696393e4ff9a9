"""network_module = "lycoris.kohya" through our wrapper: SAI / text_model_ names on save, normalised
on load, same outputs after a round trip, merge == forward."""
from __future__ import annotations

import copy

import pytest
import torch
from safetensors import safe_open

from library.lora.network_modules import import_network_module
from tests.lora_fixtures import quiet_lycoris_logging, randomise_network, te_out, token_ids, unet_inputs, unet_out

quiet_lycoris_logging()


def _outputs(model):
    return unet_out(model.unet, unet_inputs(seed=5)), te_out(model.text_encoder1, token_ids(seed=5))


@pytest.mark.parametrize("algo, marker, std", [("loha", "hada_w1_a", 0.3), ("lokr", "lokr_w1", 0.05)])
def test_lycoris_file_round_trip(algo, marker, std, tiny_sdxl, _tiny_sdxl_loaded, tmp_path, capsys):
    module = import_network_module("lycoris.kohya")
    assert module.__name__ == "networks.lycoris_kohya"
    network = module.create_network(1.0, 4, 2.0, None, tiny_sdxl.text_encoders, tiny_sdxl.unet, algo=algo,
                                    preset="full")
    network.apply_to(tiny_sdxl.text_encoders, tiny_sdxl.unet, True, True)
    randomise_network(network, seed=7, std=std)  # LoHa multiplies two products
    want_unet, want_te = _outputs(tiny_sdxl)
    base_unet, base_te = _outputs(_tiny_sdxl_loaded)
    assert (want_unet - base_unet).abs().max() > 1e-2 and (want_te - base_te).abs().max() > 1e-2

    path = tmp_path / f"{algo}.safetensors"
    network.save_weights(path, torch.float32, {"ss_network_module": "lycoris.kohya"})
    assert "not in diffusers" in capsys.readouterr().out
    with safe_open(str(path), "pt") as handle:
        keys = set(handle.keys())
    assert all(k.startswith(("lora_unet_", "lora_te1_text_model_", "lora_te2_text_model_")) for k in keys)
    assert not any("down_blocks" in k or "time_embedding" in k or "conv_in" in k for k in keys)
    for name in ("lora_unet_input_blocks_0_0", "lora_unet_out_2", "lora_unet_time_embed_0", "lora_unet_time_embed_2",
                 "lora_unet_label_emb_0_0", "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
                 "lora_unet_output_blocks_2_2_conv", "lora_te1_text_model_encoder_layers_0_self_attn_q_proj",
                 "lora_te2_text_model_encoder_layers_2_mlp_fc2"):
        assert f"{name}.{marker}" in keys, name
    assert len({k.split(".")[0] for k in keys}) == len(network.loras)

    from lycoris.config import PRESET
    from lycoris.kohya import LycorisNetworkKohya

    LycorisNetworkKohya.apply_preset(PRESET["full"])  # LyCORIS' class-level state as in a fresh process
    fresh = copy.deepcopy(_tiny_sdxl_loaded)
    loaded, _ = module.create_network_from_weights(1.0, str(path), None, fresh.text_encoders, fresh.unet)
    assert sorted((m.lora_name, type(m).__name__) for m in loaded.loras) == \
        sorted((m.lora_name, type(m).__name__) for m in network.loras)
    loaded.apply_to(fresh.text_encoders, fresh.unet, True, True)
    got_unet, got_te = _outputs(fresh)
    torch.testing.assert_close(got_unet, want_unet, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got_te, want_te, rtol=1e-4, atol=1e-4)


def test_lycoris_load_weights_and_merge_equal_forward(tiny_sdxl, _tiny_sdxl_loaded, tmp_path):
    module = import_network_module("lycoris.kohya")
    args = {"algo": "lokr", "factor": "4", "conv_dim": "4", "conv_alpha": "1"}
    network = module.create_network(1.0, 4, 1.0, None, tiny_sdxl.text_encoders, tiny_sdxl.unet, **args)
    network.apply_to(tiny_sdxl.text_encoders, tiny_sdxl.unet, True, True)
    randomise_network(network, seed=8, std=0.05)
    want_unet, want_te = _outputs(tiny_sdxl)
    path = tmp_path / "lokr.safetensors"
    network.save_weights(path, None, {})

    # load_weights into a freshly created network (resume / network_weights)
    fresh = copy.deepcopy(_tiny_sdxl_loaded)
    again = module.create_network(1.0, 4, 1.0, None, fresh.text_encoders, fresh.unet, **args)
    info = again.load_weights(str(path))
    again.apply_to(fresh.text_encoders, fresh.unet, True, True)
    assert not info["unexpected keys"]
    torch.testing.assert_close(_outputs(fresh)[0], want_unet, rtol=1e-4, atol=1e-4)

    # merge into the weights with the shared apply module
    merged_model = copy.deepcopy(_tiny_sdxl_loaded)
    merged, weights_sd = module.create_network_from_weights(1.0, str(path), None, merged_model.text_encoders,
                                                            merged_model.unet)
    assert {type(m).__name__ for m in merged.loras} == {"LokrModule"}
    merged.merge_to(merged_model.text_encoders, merged_model.unet, weights_sd, torch.float32, "cpu")
    got_unet, got_te = _outputs(merged_model)
    torch.testing.assert_close(got_unet, want_unet, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got_te, want_te, rtol=1e-4, atol=1e-4)


def test_lycoris_unknown_arg_and_dora_note(_tiny_sdxl_loaded, tmp_path, capsys):
    from library.errors import UserError

    model = _tiny_sdxl_loaded
    module = import_network_module("lycoris.kohya")
    with pytest.raises(UserError, match="algoo"):
        module.create_network(1.0, 4, 1.0, None, model.text_encoders, model.unet, algoo="loha")
    with pytest.raises(UserError, match="algo='lohaa'"):
        module.create_network(1.0, 4, 1.0, None, model.text_encoders, model.unet, algo="lohaa")
    network = module.create_network(1.0, 4, 1.0, None, model.text_encoders, model.unet, algo="locon",
                                    dora_wd="True", preset="attn-mlp")
    network.save_weights(tmp_path / "dora.safetensors", None, {})
    assert "DoRA (dora_scale per input channel, wd_on_output = False)" in capsys.readouterr().out
