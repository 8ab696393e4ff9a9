"""networks/lora_block_weight.py: a baked file equals runtime per-block scaling; wrong layouts refused."""
from __future__ import annotations

import json

import pytest
import torch

from library.lora import block_weights as bw
from networks import lora
from networks import lora_block_weight as tool
from tests.tools_fixtures import Parts, assert_outputs_close, outputs, read, run_tool, write_lora

VECTOR = [0.5, 1.0, 0.0, -0.7, 2.0, 1.5, 0.3, 0.0, 1.0, 0.8, 1.2, 0.25]  # BASE, IN04 ... OUT05


@pytest.fixture
def lora_file(_tiny_sdxl_loaded, tmp_path):
    return write_lora(_tiny_sdxl_loaded, tmp_path / "plain.safetensors", seed=3)


def test_presets_file_has_every_preset_in_both_layouts():
    presets = bw.load_presets()
    for name in ("NONE", "ALL", "INS", "IND", "INALL", "MIDD", "OUTD", "OUTS", "OUTALL", "ALL0.5",
                 "face", "Nface", "ware", "pose", "paint", "char", "back", "soft"):
        assert len(presets[name]) == 17, name
        assert len(presets[f"XL_{name}"]) == 12, name
    assert presets["XL_INS"] == [1, 1, 1] + [0] * 9  # BASE + IN04, IN05
    assert presets["face"] == [1, 0, 0, 0, 0, 0, 0, 0, 0.8, 1, 1, 0.2, 0, 0, 0, 0, 0]
    # seed presets: SD1.x OUT03..OUT08 -> SDXL OUT00..OUT05, IN04..MID kept
    assert presets["XL_face"] == [1, 0, 0, 0, 0, 0, 0.8, 1, 1, 0.2, 0, 0]


def test_baked_file_equals_runtime_block_scaling(lora_file, _tiny_sdxl_loaded, tmp_path, capsys):
    out = tmp_path / "baked.safetensors"
    code, stdout, _ = run_tool(tool, ["--model", lora_file, "--save_to", str(out),
                                      "--weights", ",".join(map(str, VECTOR))], capsys)
    assert code == 0 and "modules at weight 0 removed" in stdout

    # runtime: the original file, every module's multiplier set to its block's weight
    runtime = Parts(_tiny_sdxl_loaded)
    network, _ = lora.create_network_from_weights(1.0, lora_file, None, runtime.text_encoders, runtime.unet)
    weight_of = dict(zip(bw.LAYOUTS["SDXL-12"], VECTOR))
    for module in network.loras:
        module.multiplier = weight_of[bw.block_of(module.lora_name)]
    network.apply_to(runtime.text_encoders, runtime.unet, True, True)
    want = outputs(runtime)

    baked_model = Parts(_tiny_sdxl_loaded)
    baked, _ = lora.create_network_from_weights(1.0, str(out), None, baked_model.text_encoders, baked_model.unet)
    baked.apply_to(baked_model.text_encoders, baked_model.unet, True, True)
    assert_outputs_close(outputs(baked_model), want, base=outputs(_tiny_sdxl_loaded), tol=1e-5)

    original, _ = read(lora_file)
    tensors, metadata = read(out)
    names = {k.split(".")[0] for k in tensors}
    assert not any(bw.block_of(n) in ("IN05", "OUT01") for n in names)  # weight 0 -> dropped
    assert any(bw.block_of(n) == "IN07" for n in names)
    key = next(k for k in tensors if k.endswith("lora_up.weight") and bw.block_of(k.split(".")[0]) == "IN07")
    torch.testing.assert_close(tensors[key], original[key] * -0.7)
    down = key.replace("lora_up", "lora_down")
    assert torch.equal(tensors[down], original[down])  # only the first factor is scaled
    history = json.loads(metadata["ss_lora_tools_history"])
    assert history[-1]["operation"] == "block weights" and history[-1]["layout"] == "SDXL-12"
    assert metadata["ss_network_dim"] == "4" and metadata["sshs_model_hash"] != read(lora_file)[1]["sshs_model_hash"]


def test_sd1_vector_on_sdxl_file_is_refused_with_the_sdxl_preset(lora_file, tmp_path, capsys):
    out = tmp_path / "x.safetensors"
    face17 = ",".join(f"{v:g}" for v in bw.load_presets()["face"])
    code, _, err = run_tool(tool, ["--model", lora_file, "--save_to", str(out), "--weights", face17], capsys)
    assert code == 2 and not out.exists()
    assert "17 values" in err and "SD1.x" in err and "XL_face" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_tool(tool, ["--model", lora_file, "--save_to", str(out), "--weights", "OUTALL"], capsys)
    assert code == 2 and "XL_OUTALL" in err


def test_locon_needs_20_values_or_uncovered_weight(_tiny_sdxl_loaded, tmp_path, capsys):
    locon = write_lora(_tiny_sdxl_loaded, tmp_path / "locon.safetensors", conv_dim="4", conv_alpha="1")
    out = tmp_path / "o.safetensors"
    code, _, err = run_tool(tool, ["--model", locon, "--save_to", str(out), "--weights", "XL_ALL"], capsys)
    assert code == 2 and "20-value" in err and "IN01" in err
    code, stdout, _ = run_tool(tool, ["--model", locon, "--save_to", str(out), "--weights", ",".join(["1"] * 20)],
                               capsys)
    assert code == 0
    original, _ = read(locon)
    tensors, _ = read(out)
    assert tensors.keys() == original.keys() and all(torch.equal(tensors[k], original[k]) for k in tensors)


def test_refuses_non_lora_and_overwriting(lora_file, tiny_single_file, tmp_path, capsys):
    code, _, err = run_tool(tool, ["--model", str(tiny_single_file), "--save_to", str(tmp_path / "a.safetensors"),
                                   "--weights", "XL_ALL"], capsys)
    assert code == 2 and "not a LoRA file" in err and "checkpoint" in err
    code, _, err = run_tool(tool, ["--model", lora_file, "--save_to", lora_file, "--weights", "XL_ALL"], capsys)
    assert code == 2 and "overwrite an input" in err
