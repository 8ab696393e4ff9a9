"""check_lora_weights.py and show_metadata.py report what is in the file; every tool has a --help."""
from __future__ import annotations

import importlib
import json
import re

import pytest
import torch
from safetensors.torch import save_file

from networks import check_lora_weights
from tests.tools_fixtures import read, run_tool, write_lora
from tools import show_metadata

ZEROED = "lora_unet_output_blocks_3_1_transformer_blocks_0_attn2_to_k"


@pytest.fixture
def half_trained(_tiny_sdxl_loaded, tmp_path):
    path = write_lora(_tiny_sdxl_loaded, tmp_path / "lora.safetensors", seed=2)
    tensors, metadata = read(path)
    tensors[f"{ZEROED}.lora_up.weight"].zero_()
    save_file(tensors, path, metadata)
    return path, tensors, metadata


def test_check_flags_untrained_modules_and_reports_magnitudes(half_trained, capsys):
    path, tensors, _ = half_trained
    code, stdout, _ = run_tool(check_lora_weights, [path], capsys)
    assert code == 0
    flagged = re.findall(r"^  untrained: (\S+)$", stdout, re.M)
    assert flagged == [ZEROED]
    n_modules = len({k.split(".")[0] for k in tensors})
    assert f"{n_modules} modules ({n_modules} lora); 1 untrained" in stdout
    key = "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"
    line = re.search(rf"^  {re.escape(key)}: shape \(4, 64\) float32 mean\|x\| (\S+) max\|x\| (\S+)$", stdout, re.M)
    assert line is not None
    assert float(line.group(1)) == pytest.approx(tensors[key].abs().mean().item(), rel=1e-3)
    assert float(line.group(2)) == pytest.approx(tensors[key].abs().max().item(), rel=1e-3)
    name = "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"
    norm = float(re.search(rf"^{name}: lora rank 4 \|dW\| (\S+)$", stdout, re.M).group(1))
    want = (tensors[f"{name}.lora_up.weight"] @ tensors[f"{name}.lora_down.weight"] * 0.5).norm().item()
    assert norm == pytest.approx(want, rel=1e-3)


def test_show_metadata_prints_decoded_json(half_trained, tiny_single_file, capsys):
    path, _, metadata = half_trained
    code, stdout, err = run_tool(show_metadata, [path], capsys)
    assert code == 0 and "LoRA modules" in err
    shown = json.loads(stdout)
    assert shown["ss_network_module"] == "networks.lora" and shown.keys() == metadata.keys()
    code, stdout, _ = run_tool(show_metadata, [path, "--key", "ss_network_dim"], capsys)
    assert json.loads(stdout) == {"ss_network_dim": "4"}
    code, _, err = run_tool(show_metadata, [str(tiny_single_file)], capsys)
    assert code == 2 and "not a LoRA file" in err
    code, stdout, _ = run_tool(show_metadata, [str(tiny_single_file), "--any_safetensors"], capsys)
    assert code == 0 and json.loads(stdout)["modelspec.title"] == "tiny SDXL (seed 0)"


@pytest.mark.parametrize("module, words", [
    ("networks.sdxl_merge_lora", ["--concat", "--lbws", "diffusers folder"]),
    ("networks.svd_merge_lora", ["--new_rank", "SVD"]),
    ("networks.resize_lora", ["sv_fro", "--verbose"]),
    ("networks.extract_lora_from_models", ["--clamp_quantile", "--min_diff"]),
    ("networks.check_lora_weights", ["untrained"]),
    ("networks.lora_block_weight", ["BASE", "--list_presets"]),
    ("tools.show_metadata", ["ss_network_args"]),
    ("tools.sdxl_gen_img", ["<lora:", "--grid_weights", "--network_merge"]),
])
def test_every_tool_explains_itself(module, words, capsys):
    tool = importlib.import_module(module)
    with pytest.raises(SystemExit) as exit_info:
        tool.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert all(word in text for word in words), [w for w in words if w not in text]


def test_not_a_lora_is_one_line(tmp_path, capsys):
    bogus = tmp_path / "bogus.safetensors"
    save_file({"clip_l": torch.zeros(1, 4), "clip_g": torch.zeros(1, 8)}, str(bogus))
    code, _, err = run_tool(check_lora_weights, [str(bogus)], capsys)
    assert code == 2 and "embedding" in err and len(err.strip().splitlines()) == 1
    text = tmp_path / "notes.safetensors"
    text.write_text("hello")
    code, _, err = run_tool(check_lora_weights, [str(text)], capsys)
    assert code == 2 and "not a readable safetensors file" in err


def test_other_naming_styles_are_read_and_written_canonically(_tiny_sdxl_loaded, tmp_path, capsys):
    """diffusers UNet names and TE names without text_model_ map to the canonical names."""
    from library.lora.naming import ModelNames
    from networks import lora_block_weight

    path = write_lora(_tiny_sdxl_loaded, tmp_path / "lora.safetensors", seed=4)
    tensors, metadata = read(path)
    names = ModelNames(_tiny_sdxl_loaded.unet, _tiny_sdxl_loaded.text_encoders)
    renamed = {}
    for key, value in tensors.items():
        name, suffix = key.split(".", 1)
        ref = names.ref(name)
        if ref.component == "unet":
            other = "lora_unet_" + ref.path.replace(".", "_")
        else:
            other = name.replace("text_model_", "")
        renamed[f"{other}.{suffix}"] = value
    assert not renamed.keys() & tensors.keys()
    foreign = tmp_path / "foreign.safetensors"
    save_file(renamed, str(foreign), metadata)
    out = tmp_path / "out.safetensors"
    assert run_tool(lora_block_weight, ["--model", str(foreign), "--save_to", str(out), "--weights", "XL_ALL"],
                    capsys)[0] == 0
    written, _ = read(out)
    assert written.keys() == tensors.keys() and all(torch.equal(written[k], tensors[k]) for k in tensors)


def test_huge_metadata_values_are_cut_when_printed_and_copied(half_trained, tmp_path, capsys):
    from networks import sdxl_merge_lora

    path, tensors, metadata = half_trained
    huge = "x" * 3_000_000
    save_file(tensors, path, {**metadata, "ss_tag_frequency": huge})
    code, stdout, _ = run_tool(show_metadata, [path], capsys)
    assert code == 0 and len(stdout) < 20_000
    assert json.loads(stdout)["ss_tag_frequency"] == "x" * 2000 + "... (3,000,000 bytes)"
    code, stdout, _ = run_tool(show_metadata, [path, "--full"], capsys)
    assert json.loads(stdout)["ss_tag_frequency"] == huge

    out = tmp_path / "merged.safetensors"
    code, stdout, _ = run_tool(sdxl_merge_lora, ["--models", path, path, "--save_to", str(out)], capsys)
    assert code == 0
    assert "notice: metadata ss_tag_frequency (3,000,000 bytes) is cut to its first 2,000 characters in the new file" in stdout
    assert read(out)[1]["ss_tag_frequency"] == "x" * 2000 + "... (3,000,000 bytes)"
