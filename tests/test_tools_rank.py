"""resize_lora.py, svd_merge_lora.py, extract_lora_from_models.py: numbers checked against independent
recomputations from the files (deltas through the shared apply module)."""
from __future__ import annotations

import json
import re

import pytest
import torch

from library.lora import block_weights as bw
from library.lora import weights_math
from library.lora.naming import group_by_module
from networks import extract_lora_from_models, resize_lora, sdxl_merge_lora, svd_merge_lora
from tests.tools_fixtures import read, run_tool, write_lora, write_lycoris


def _shape(group):
    down, up = group["lora_down.weight"], group["lora_up.weight"]
    return (up.shape[0], *down.shape[1:])


def deltas(path, shapes=None) -> dict:
    """{module: dW float32} of a file, via the shared apply module (shapes from the LoRA factors)."""
    groups = group_by_module(read(path)[0])
    return {name: weights_math.delta_weight(g, shapes[name] if shapes else _shape(g)) for name, g in groups.items()}


def rel_err(a, b) -> float:
    return float((a - b).norm() / b.norm())


def test_same_rank_resize_is_lossless(_tiny_sdxl_loaded, tmp_path, capsys):
    src = write_lora(_tiny_sdxl_loaded, tmp_path / "locon.safetensors", dim=4, alpha=2.0, conv_dim="2",
                     conv_alpha="1")
    out = tmp_path / "same.safetensors"
    code, stdout, _ = run_tool(resize_lora, ["--model", src, "--save_to", str(out), "--new_rank", "4",
                                             "--new_conv_rank", "2"], capsys)
    assert code == 0 and "wrote" in stdout
    before, after = deltas(src), deltas(out)
    assert before.keys() == after.keys()
    assert max(rel_err(after[n], before[n]) for n in before) < 1e-5
    tensors, metadata = read(out)
    assert tensors["lora_unet_input_blocks_1_0_in_layers_2.lora_down.weight"].shape[:2] == (2, 32)
    assert float(tensors["lora_unet_input_blocks_1_0_in_layers_2.alpha"]) == 1.0  # alpha/rank kept (0.5)
    assert metadata["ss_network_dim"] == "Dynamic"  # rank 4 and conv rank 2
    assert json.loads(metadata["ss_lora_tools_history"])[-1]["operation"] == "resize"


@pytest.mark.parametrize("method, param", [("sv_fro", 0.9), ("sv_cumulative", 0.8)])
def test_dynamic_resize_keeps_the_requested_energy(method, param, _tiny_sdxl_loaded, tmp_path, capsys):
    src = write_lora(_tiny_sdxl_loaded, tmp_path / "r8.safetensors", dim=8, alpha=8.0, seed=4)
    out = tmp_path / "dyn.safetensors"
    code, stdout, _ = run_tool(resize_lora, ["--model", src, "--save_to", str(out), "--new_rank", "8",
                                             "--dynamic_method", method, "--dynamic_param", str(param),
                                             "--verbose"], capsys)
    assert code == 0
    printed = {m.group(1): (int(m.group(2)), float(m.group(3)), float(m.group(4))) for m in re.finditer(
        r"^(\S+): rank \d+ -> (\d+), sum\(S\) retained ([\d.]+), fro retained ([\d.]+)", stdout, re.M)}
    before, after = deltas(src), deltas(out)
    assert printed.keys() == before.keys()
    ranks = []
    for name, (rank, sum_share, fro_share) in printed.items():
        s_old = torch.linalg.svdvals(before[name].reshape(before[name].shape[0], -1).double())
        s_new = torch.linalg.svdvals(after[name].reshape(after[name].shape[0], -1).double())
        fro = float(after[name].double().norm() / before[name].double().norm())
        cumulative = float(s_new[:rank].sum() / s_old.sum())
        assert abs(fro - fro_share) < 2e-6 and abs(cumulative - sum_share) < 2e-6, name
        assert (fro if method == "sv_fro" else cumulative) >= param - 1e-6, name
        # the smallest rank meeting the target: one less would not
        shorter = s_old[:rank - 1]
        if method == "sv_fro":
            less = float(shorter.pow(2).sum().sqrt() / s_old.norm())
        else:
            less = float(shorter.sum() / s_old.sum())
        assert less < param, name
        ranks.append(rank)
    assert min(ranks) < 8 and len(set(ranks)) > 1
    assert read(out)[1]["ss_network_dim"] == "Dynamic"


def test_resize_refuses_dora(_tiny_sdxl_loaded, tmp_path, capsys):
    dora = write_lycoris(_tiny_sdxl_loaded, tmp_path / "dora.safetensors", "lora", dora_wd="True")
    code, _, err = run_tool(resize_lora, ["--model", dora, "--save_to", str(tmp_path / "x.safetensors"),
                                          "--new_rank", "2"], capsys)
    assert code == 2 and "DoRA" in err and "not linear" in err


def test_svd_merge_with_enough_rank_is_exact(_tiny_sdxl_loaded, tmp_path, capsys):
    a = write_lora(_tiny_sdxl_loaded, tmp_path / "a.safetensors", seed=1, dim=4)
    b = write_lora(_tiny_sdxl_loaded, tmp_path / "b.safetensors", seed=2, dim=2)
    out = tmp_path / "ab.safetensors"
    code, stdout, _ = run_tool(svd_merge_lora, ["--models", a, b, "--ratios", "0.5", "1.5", "--lbws", "",
                                                "XL_OUTALL", "--save_to", str(out), "--new_rank", "6"], capsys)
    assert code == 0 and "2 files merged" in stdout
    da, db, merged = deltas(a), deltas(b), deltas(out)
    weight_of = dict(zip(bw.LAYOUTS["SDXL-12"], bw.load_presets()["XL_OUTALL"]))
    for name in da:
        want = 0.5 * da[name] + 1.5 * weight_of[bw.block_of(name)] * db[name]
        assert rel_err(merged[name], want) < 1e-4, name
    assert read(out)[1]["ss_network_dim"] == "6"
    # at rank 2 the result is the best rank-2 approximation: its error is the discarded singular values
    out2 = tmp_path / "ab2.safetensors"
    assert run_tool(svd_merge_lora, ["--models", a, b, "--save_to", str(out2), "--new_rank", "2"], capsys)[0] == 0
    name = "lora_unet_middle_block_1_proj_in"
    want = da[name] + db[name]
    s = torch.linalg.svdvals(want.double())
    err = float((deltas(out2)[name] - want).double().norm())
    assert abs(err - float(s[2:].norm())) < 1e-5 * float(s.norm())


def test_extract_recovers_the_lora_delta(_tiny_sdxl_loaded, tiny_single_file, tmp_path, capsys):
    lora_path = write_lora(_tiny_sdxl_loaded, tmp_path / "l.safetensors", seed=9, dim=4, alpha=2.0,
                           conv_dim="2", conv_alpha="2")
    tuned = tmp_path / "tuned.safetensors"
    assert run_tool(sdxl_merge_lora, ["--sd_model", str(tiny_single_file), "--save_to", str(tuned),
                                      "--models", lora_path], capsys)[0] == 0
    out = tmp_path / "extracted.safetensors"
    code, stdout, _ = run_tool(extract_lora_from_models, [
        "--model_org", str(tiny_single_file), "--model_tuned", str(tuned), "--save_to", str(out), "--dim", "4",
        "--conv_dim", "2", "--clamp_quantile", "1", "--min_diff", "0"], capsys)
    assert code == 0 and "wrote" in stdout
    want, got = deltas(lora_path), deltas(out)
    assert got.keys() == want.keys() and any(n.startswith("lora_te2_") for n in got)
    errors = {n: rel_err(got[n], want[n]) for n in want}
    assert max(errors.values()) < 1e-4, max(errors.items(), key=lambda kv: kv[1])
    tensors, metadata = read(out)
    assert tensors["lora_unet_input_blocks_1_0_in_layers_2.lora_down.weight"].shape[0] == 2
    assert metadata["ss_network_dim"] == "4" and metadata["ss_network_module"] == "networks.lora"

    # the default clamp changes the factors; min_diff above the TE change leaves the text encoders out
    clamped = tmp_path / "clamped.safetensors"
    code, stdout, _ = run_tool(extract_lora_from_models, [
        "--model_org", str(tiny_single_file), "--model_tuned", str(tuned), "--save_to", str(clamped), "--dim", "4",
        "--min_diff", "100"], capsys)
    assert code == 0 and "left out" in stdout
    names = set(deltas(clamped))
    assert names and not any(n.startswith("lora_te") for n in names)


def test_resize_converts_lokr_convs_to_lora_losslessly(_tiny_sdxl_loaded, tmp_path, capsys):
    """LoKr flattens conv factors, so shapes come from the module names; checked against the model's."""
    from library.lora.naming import ModelNames

    src = write_lycoris(_tiny_sdxl_loaded, tmp_path / "lokr.safetensors", "lokr", std=0.1, preset="full", factor="4")
    out = tmp_path / "lora.safetensors"
    assert run_tool(resize_lora, ["--model", src, "--save_to", str(out), "--new_rank", "64"], capsys)[0] == 0
    names = ModelNames(_tiny_sdxl_loaded.unet, _tiny_sdxl_loaded.text_encoders)
    shapes = {n: tuple(ref.module.weight.shape) for n, ref in names.refs.items()}
    before, after = deltas(src, shapes), deltas(out, shapes)
    assert before.keys() == after.keys() and "lora_unet_input_blocks_1_0_in_layers_2" in before
    assert max(rel_err(after[n], before[n]) for n in before) < 1e-4
    assert all(k.split(".", 1)[1] in ("lora_down.weight", "lora_up.weight", "alpha") for k in read(out)[0])
