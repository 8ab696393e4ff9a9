"""networks/sdxl_merge_lora.py: merged checkpoints equal runtime application by independent consumers
(diffusers for LoRA/LoCon, LyCORIS for LoHa/LoKr/DoRA); LoRA-into-LoRA merges."""
from __future__ import annotations

import json

import pytest

from library.models.sdxl_loader import load_sdxl
from networks import lora, lycoris_kohya
from networks import sdxl_merge_lora as tool
from tests.tools_fixtures import Parts, assert_outputs_close, outputs, read, run_tool, write_lora, write_lycoris


def _diffusers_outputs(diffusers_dir, path, ratio):
    from diffusers import StableDiffusionXLPipeline

    from tests.lora_fixtures import te_out, token_ids, unet_inputs, unet_out

    pipe = StableDiffusionXLPipeline.from_pretrained(str(diffusers_dir), local_files_only=True)
    pipe.load_lora_weights(str(path), adapter_name="x")
    pipe.set_adapters(["x"], adapter_weights=[ratio])
    ids = token_ids(seed=5)
    return (unet_out(pipe.unet, unet_inputs(seed=5)), te_out(pipe.text_encoder, ids), te_out(pipe.text_encoder_2, ids))


@pytest.mark.parametrize("kind, ratio, to_folder", [("lora", 0.7, False), ("locon", -1.3, True)])
def test_checkpoint_merge_equals_diffusers_runtime(kind, ratio, to_folder, _tiny_sdxl_loaded, tiny_single_file,
                                                   tiny_diffusers_dir, tmp_path, capsys):
    args = {"conv_dim": "4", "conv_alpha": "2"} if kind == "locon" else {}
    path = write_lora(_tiny_sdxl_loaded, tmp_path / f"{kind}.safetensors", seed=11, **args)
    source = tiny_diffusers_dir if to_folder else tiny_single_file
    out = tmp_path / ("merged_dir" if to_folder else "merged.safetensors")
    code, stdout, _ = run_tool(tool, ["--sd_model", str(source), "--save_to", str(out), "--models", path,
                                      "--ratios", str(ratio)], capsys)
    assert code == 0 and "module merges" in stdout
    assert (out / "model_index.json").is_file() if to_folder else out.is_file()
    merged = load_sdxl(out)
    want = _diffusers_outputs(tiny_diffusers_dir, path, ratio)
    assert_outputs_close(outputs(merged), want, base=outputs(_tiny_sdxl_loaded))
    if not to_folder:
        _, metadata = read(out)
        assert json.loads(metadata["merged_loras"])[0]["ratio"] == ratio


@pytest.mark.parametrize("algo, ratio, args", [("loha", 0.8, {}), ("lokr", -0.6, {"factor": "4"}),
                                               ("lora", 1.0, {"dora_wd": "True"})])
def test_checkpoint_merge_equals_lycoris_runtime(algo, ratio, args, _tiny_sdxl_loaded, tiny_single_file,
                                                 tmp_path, capsys):
    std = 0.3 if algo == "loha" else 0.05
    path = write_lycoris(_tiny_sdxl_loaded, tmp_path / f"{algo}.safetensors", algo, std=std, preset="full", **args)
    out = tmp_path / "merged.safetensors"
    code, _, _ = run_tool(tool, ["--sd_model", str(tiny_single_file), "--save_to", str(out), "--models", path,
                                 "--ratios", str(ratio)], capsys)
    assert code == 0
    runtime = Parts(_tiny_sdxl_loaded)
    network, _ = lycoris_kohya.create_network_from_weights(ratio, path, None, runtime.text_encoders, runtime.unet)
    network.apply_to(runtime.text_encoders, runtime.unet, True, True)
    assert_outputs_close(outputs(load_sdxl(out)), outputs(runtime), base=outputs(_tiny_sdxl_loaded))


def _runtime(model, files_and_ratios):
    model = Parts(model)
    for path, ratio in files_and_ratios:
        network, _ = lora.create_network_from_weights(ratio, path, None, model.text_encoders, model.unet)
        network.apply_to(model.text_encoders, model.unet, True, True)
    return outputs(model)


def _loaded(model, path):
    return _runtime(model, [(path, 1.0)])


def test_concat_merge_equals_applying_both(_tiny_sdxl_loaded, tmp_path, capsys):
    a = write_lora(_tiny_sdxl_loaded, tmp_path / "a.safetensors", seed=1, dim=4, alpha=2.0)
    b = write_lora(_tiny_sdxl_loaded, tmp_path / "b.safetensors", seed=2, dim=2, alpha=1.0, conv_dim="2")
    out = tmp_path / "ab.safetensors"
    code, stdout, _ = run_tool(tool, ["--save_to", str(out), "--models", a, b, "--ratios", "0.6", "-0.4",
                                      "--concat"], capsys)
    assert code == 0 and "rank-concatenated" in stdout
    want = _runtime(_tiny_sdxl_loaded, [(a, 0.6), (b, -0.4)])
    assert_outputs_close(_loaded(_tiny_sdxl_loaded, str(out)), want, base=outputs(_tiny_sdxl_loaded), tol=1e-5)
    tensors, metadata = read(out)
    shared = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"
    assert tensors[f"{shared}.lora_down.weight"].shape[0] == 6  # 4 + 2
    assert tensors["lora_unet_input_blocks_1_0_in_layers_2.lora_down.weight"].shape[0] == 2  # only in b
    assert metadata["ss_network_dim"] == "Dynamic" and metadata["ss_network_module"] == "networks.lora"
    assert json.loads(metadata["ss_lora_tools_history"])[-1]["ratios"] == [0.6, -0.4]


def test_sum_merge_of_one_file_is_exact_and_refuses_unequal_ranks(_tiny_sdxl_loaded, tmp_path, capsys):
    a = write_lora(_tiny_sdxl_loaded, tmp_path / "a.safetensors", seed=1, dim=4, alpha=2.0)
    b = write_lora(_tiny_sdxl_loaded, tmp_path / "b.safetensors", seed=2, dim=2)
    out = tmp_path / "half.safetensors"
    assert run_tool(tool, ["--save_to", str(out), "--models", a, "--ratios", "-0.5"], capsys)[0] == 0
    assert_outputs_close(_loaded(_tiny_sdxl_loaded, str(out)), _runtime(_tiny_sdxl_loaded, [(a, -0.5)]), tol=1e-5)
    code, _, err = run_tool(tool, ["--save_to", str(tmp_path / "x.safetensors"), "--models", a, b], capsys)
    assert code == 2 and "equal ranks" in err and "--concat" in err


def test_lora_merge_refuses_dora_loha_and_non_lora(_tiny_sdxl_loaded, tiny_single_file, tmp_path, capsys):
    dora = write_lycoris(_tiny_sdxl_loaded, tmp_path / "dora.safetensors", "lora", dora_wd="True")
    loha = write_lycoris(_tiny_sdxl_loaded, tmp_path / "loha.safetensors", "loha")
    out = str(tmp_path / "x.safetensors")
    code, _, err = run_tool(tool, ["--save_to", out, "--models", dora, "--concat"], capsys)
    assert code == 2 and "DoRA" in err and "checkpoint" in err
    code, _, err = run_tool(tool, ["--save_to", out, "--models", loha, "--concat"], capsys)
    assert code == 2 and "loha" in err and "svd_merge_lora" in err
    code, _, err = run_tool(tool, ["--save_to", out, "--models", str(tiny_single_file)], capsys)
    assert code == 2 and "not a LoRA file" in err
    code, _, err = run_tool(tool, ["--sd_model", str(tiny_single_file), "--save_to", str(tiny_single_file),
                                   "--models", loha], capsys)
    assert code == 2 and "overwrite an input" in err
