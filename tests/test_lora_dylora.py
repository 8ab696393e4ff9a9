"""DyLoRA (plain LoRA keys, unit-sized training slices), its extractor, and base_weights merging."""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from library.errors import UserError
from library.lora.merge import merge_base_weights
from networks import dylora, extract_lora_from_dylora, lora
from tests.lora_fixtures import quiet_lycoris_logging, randomise_network, te_out, token_ids, unet_inputs, unet_out

quiet_lycoris_logging()

ROOT = Path(__file__).resolve().parent.parent


def test_dylora_trains_one_unit_slice_and_saves_plain_lora(tiny_sdxl, tmp_path):
    network = dylora.create_network(1.0, 8, 4.0, None, tiny_sdxl.text_encoders, tiny_sdxl.unet, unit="2",
                                    conv_dim="4")
    network.apply_to(tiny_sdxl.text_encoders, tiny_sdxl.unet, True, True)
    randomise_network(network, seed=3)
    network.train()
    inputs = unet_inputs()
    unet_out_grad = tiny_sdxl.unet(**inputs).sample.square().mean()
    unet_out_grad.backward()
    for module in network.unet_loras[:20]:
        rows = (module.lora_down.weight.grad.flatten(1).abs().sum(1) > 0).nonzero().flatten().tolist()
        assert len(rows) == module.unit and rows[0] % module.unit == 0 and rows == list(range(rows[0], rows[0] + 2))
    path = tmp_path / "dy.safetensors"
    network.save_weights(path, None, {"ss_network_dim": "8", "ss_network_alpha": "4.0"})
    with safe_open(str(path), "pt") as handle:
        suffixes = {k.split(".", 1)[1] for k in handle.keys()}
        assert handle.get_tensor("lora_unet_input_blocks_4_1_proj_in.lora_down.weight").shape == (8, 64)
    assert suffixes == {"lora_down.weight", "lora_up.weight", "alpha"}
    with pytest.raises(UserError, match="unit=3"):
        dylora.create_network(1.0, 8, 4.0, None, tiny_sdxl.text_encoders, tiny_sdxl.unet, unit="3")


def test_extracted_rank_reproduces_dylora_at_that_rank(tiny_sdxl, _tiny_sdxl_loaded, tmp_path):
    network = dylora.create_network(1.0, 8, 4.0, None, tiny_sdxl.text_encoders, tiny_sdxl.unet, unit="2")
    network.apply_to(tiny_sdxl.text_encoders, tiny_sdxl.unet, True, True)
    randomise_network(network, seed=4)
    path = tmp_path / "dy.safetensors"
    network.save_weights(path, None, {"ss_network_dim": "8", "ss_network_alpha": "4.0"})
    network.eval()
    network.set_eval_rank(4)
    inputs, ids = unet_inputs(seed=6), token_ids(seed=6)
    want_unet, want_te = unet_out(tiny_sdxl.unet, inputs), te_out(tiny_sdxl.text_encoder2, ids)
    network.set_eval_rank(None)
    assert (unet_out(tiny_sdxl.unet, inputs) - want_unet).abs().max() > 1e-3  # rank matters

    out = tmp_path / "cut.safetensors"
    assert extract_lora_from_dylora.main(["--model", str(path), "--save_to", str(out), "--unit", "2"]) == 0
    assert sorted(p.name for p in tmp_path.glob("cut-*.safetensors")) == \
        ["cut-0002.safetensors", "cut-0004.safetensors", "cut-0006.safetensors"]
    cut = tmp_path / "cut-0004.safetensors"
    with safe_open(str(cut), "pt") as handle:
        meta = handle.metadata()
        assert handle.get_tensor("lora_unet_input_blocks_4_1_proj_in.lora_up.weight").shape == (64, 4)
        assert float(handle.get_tensor("lora_unet_input_blocks_4_1_proj_in.alpha")) == 2.0
    assert meta["ss_network_dim"] == "4" and float(meta["ss_network_alpha"]) == 2.0

    fresh = copy.deepcopy(_tiny_sdxl_loaded)
    plain, _ = lora.create_network_from_weights(1.0, str(cut), None, fresh.text_encoders, fresh.unet)
    plain.apply_to(fresh.text_encoders, fresh.unet, True, True)
    torch.testing.assert_close(unet_out(fresh.unet, inputs), want_unet, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(te_out(fresh.text_encoder2, ids), want_te, rtol=1e-4, atol=1e-4)


def test_extract_cli_runs_as_a_script_and_reports_bad_rank(tmp_path):
    script = ROOT / "networks" / "extract_lora_from_dylora.py"
    bad = subprocess.run([sys.executable, str(script), "--model", str(tmp_path / "missing.safetensors"),
                          "--save_to", str(tmp_path / "o.safetensors"), "--rank", "2"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode == 2 and "LoRA file not found" in bad.stderr and "Traceback" not in bad.stderr


def test_base_weights_merge_any_format_at_multiplier(tiny_sdxl, _tiny_sdxl_loaded, tmp_path):
    from networks import lycoris_kohya

    network = lora.create_network(1.0, 4, 2.0, None, tiny_sdxl.text_encoders, tiny_sdxl.unet, conv_dim="4")
    network.apply_to(tiny_sdxl.text_encoders, tiny_sdxl.unet, True, True)
    randomise_network(network, seed=5)
    network.set_multiplier(0.5)
    inputs = unet_inputs(seed=7)
    want = unet_out(tiny_sdxl.unet, inputs)
    path = tmp_path / "base.safetensors"
    network.save_weights(path, None, {})

    fresh = copy.deepcopy(_tiny_sdxl_loaded)
    lines = []
    merge_base_weights([str(path)], [0.5], fresh.unet, fresh.text_encoders, log=lines.append)
    torch.testing.assert_close(unet_out(fresh.unet, inputs), want, rtol=1e-4, atol=1e-4)
    assert lines == [f"base_weights: merged {len(network.loras)} modules of {path} at multiplier 0.5"]

    # LoHa through the same path: equal to the applied LyCORIS network
    model = copy.deepcopy(_tiny_sdxl_loaded)
    loha = lycoris_kohya.create_network(1.0, 4, 4.0, None, model.text_encoders, model.unet, algo="loha")
    loha.apply_to(model.text_encoders, model.unet, True, True)
    randomise_network(loha, seed=6, std=0.3)
    want = unet_out(model.unet, inputs)
    loha_path = tmp_path / "loha.safetensors"
    loha.save_weights(loha_path, None, {})
    other = copy.deepcopy(_tiny_sdxl_loaded)
    merge_base_weights([str(loha_path)], None, other.unet, other.text_encoders, log=lines.append)
    torch.testing.assert_close(unet_out(other.unet, inputs), want, rtol=1e-4, atol=1e-4)
    with pytest.raises(UserError, match="base_weights_multiplier"):
        merge_base_weights([str(path)], [1.0, 1.0], other.unet, other.text_encoders)
