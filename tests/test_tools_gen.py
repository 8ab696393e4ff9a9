"""tools/sdxl_gen_img.py on the tiny model at 64 px: grid layout and labels, weight 0 == base image,
prompt tags == command-line LoRAs == --network_merge, pivotal embeddings as new tokens."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from library.generation import grid as grid_layout
from library.generation.embeddings import Embeddings
from library.generation.prompts import split_prompt
from library.models.sdxl_conditioning import encode_captions
from tests.tools_fixtures import run_tool, write_lora
from tools import sdxl_gen_img as tool

FAST = ["--W", "64", "--H", "64", "--steps", "2", "--sampler", "euler", "--scale", "5"]


@pytest.fixture
def lora_path(_tiny_sdxl_loaded, tmp_path):
    folder = tmp_path / "loras"
    folder.mkdir()
    return write_lora(_tiny_sdxl_loaded, folder / "plain.safetensors", seed=6, std=0.2)


def _pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _single_image(folder):
    files = sorted(folder.glob("*.png"))
    assert len(files) == 1, files
    return files[0]


def test_grid_has_labels_and_weight_zero_is_the_base_image(lora_path, tiny_single_file, tmp_path, capsys):
    grid_file = tmp_path / "grid.png"
    code, stdout, _ = run_tool(tool, ["--ckpt", str(tiny_single_file), "--prompt", "a red cube",
                                      "--network_weights", lora_path, "--grid_weights", "0,1",
                                      "--grid_y", "seed", "--grid_seeds", "3", "4", "--grid_file", str(grid_file),
                                      *FAST], capsys)
    assert code == 0 and "2 rows (seed) x 2 LoRA weights" in stdout
    grid = _pixels(grid_file)
    rows = ["seed 3", "seed 4"]
    left = grid_layout.label_width(rows)
    assert grid.shape == (grid_layout.HEADER + 2 * 64, left + 2 * 64, 3)
    header, label_column = grid[:grid_layout.HEADER, left:], grid[grid_layout.HEADER:, :left]
    assert (header < 128).any() and (label_column < 128).any()  # text drawn
    assert (grid[:grid_layout.HEADER, :left] == 255).all()  # the corner stays blank

    base_dir = tmp_path / "base"
    assert run_tool(tool, ["--ckpt", str(tiny_single_file), "--prompt", "a red cube", "--seed", "3",
                           "--outdir", str(base_dir), *FAST], capsys)[0] == 0
    base = _pixels(_single_image(base_dir))
    box = grid_layout.cell_box(0, 0, (64, 64), rows)
    cell = grid[box[1]:box[3], box[0]:box[2]]
    assert np.array_equal(cell, base)
    box1 = grid_layout.cell_box(1, 0, (64, 64), rows)
    assert np.abs(grid[box1[1]:box1[3], box1[0]:box1[2]].astype(int) - base).max() > 8  # the LoRA shows
    box_seed4 = grid_layout.cell_box(0, 1, (64, 64), rows)
    assert not np.array_equal(grid[box_seed4[1]:box_seed4[3], box_seed4[0]:box_seed4[2]], base)


def test_prompt_tag_equals_cli_lora_and_network_merge(lora_path, tiny_single_file, tmp_path, capsys):
    tagged, merged = tmp_path / "tagged", tmp_path / "merged"
    assert run_tool(tool, ["--ckpt", str(tiny_single_file), "--prompt", "a red cube <lora:plain:0.5>", "--seed", "7",
                           "--network_dir", str(tmp_path / "loras"), "--outdir", str(tagged), *FAST], capsys)[0] == 0
    assert run_tool(tool, ["--ckpt", str(tiny_single_file), "--prompt", "a red cube", "--seed", "7",
                           "--network_weights", lora_path, "--network_mul", "0.5", "--network_merge",
                           "--outdir", str(merged), *FAST], capsys)[0] == 0
    a, b = _single_image(tagged), _single_image(merged)
    assert np.array_equal(_pixels(a), _pixels(b))
    info = Image.open(a).info["parameters"]
    assert info.startswith("a red cube\n") and "LoRAs: plain:0.5" in info and "Seed: 7" in info
    code, _, err = run_tool(tool, ["--ckpt", str(tiny_single_file), "--prompt", "x <lora:missing:1>",
                                   "--network_dir", str(tmp_path / "loras"), "--outdir", str(tagged), *FAST], capsys)
    assert code == 2 and "missing.safetensors" in err


def test_prompt_tags_parse():
    text, tags = split_prompt("photo of x, <lora:a:0.7> smiling <lora:b:1:lbw=XL_face> <lora:c>")
    assert text == "photo of x, smiling"
    assert [(t.name, t.weight, t.lbw) for t in tags] == [("a", 0.7, None), ("b", 1.0, "XL_face"), ("c", 1.0, None)]


def test_embedding_rows_become_new_tokens(_tiny_sdxl_loaded, tmp_path):
    import copy

    model = copy.deepcopy(_tiny_sdxl_loaded)
    generator = torch.Generator().manual_seed(0)
    clip_l, clip_g = torch.randn(2, 64, generator=generator), torch.randn(2, 128, generator=generator)
    path = tmp_path / "mychar_emb.safetensors"
    save_file({"clip_l": clip_l, "clip_g": clip_g}, str(path))
    before = encode_captions(model, ["photo of mychar_emb"], None)[0]
    embeddings = Embeddings()
    assert embeddings.load(model, path) == "mychar_emb"
    prompt = embeddings.expand("photo of mychar_emb, smiling")
    assert prompt == "photo of <mychar_emb_0> <mychar_emb_1>, smiling"
    for tokenizer, encoder, rows in ((model.tokenizer1, model.text_encoder1, clip_l),
                                     (model.tokenizer2, model.text_encoder2, clip_g)):
        ids = tokenizer(prompt, add_special_tokens=False).input_ids
        new = [i for i in ids if i >= 49408]
        assert new == [49408, 49409]
        torch.testing.assert_close(encoder.get_input_embeddings().weight[new], rows)
    after = encode_captions(model, [prompt], None)[0]
    plain = encode_captions(model, ["photo of"], None)[0]
    assert (after - before).abs().max() > 1e-3
    torch.testing.assert_close(after[:, :3], plain[:, :3])  # BOS, "photo", "of" unchanged (causal attention)


def test_every_sampler_runs_on_the_one_sampling_stack(_tiny_sdxl_loaded):
    """Training samples and sdxl_gen_img share library/generation/sampling.py: each of kohya's sampler
    names denoises (deterministic ones take no generator, ancestral ones draw from the seed's), a k_ alias
    is its sampler, a seed repeats its image, and v-prediction switches the scheduler's target."""
    from library.errors import UserError
    from library.generation.sampling import SAMPLERS, Settings, generate, make_scheduler

    def image(sampler: str, seed: int = 3) -> np.ndarray:
        return np.asarray(generate(_tiny_sdxl_loaded, "a red square", "", seed, Settings(64, 64, 3, 5.0, sampler)))

    images = {name: image(name) for name in SAMPLERS}
    assert all(pixels.shape == (64, 64, 3) for pixels in images.values())
    assert len({pixels.tobytes() for pixels in images.values()}) >= 6  # different samplers, different paths
    assert np.array_equal(image("k_euler_a"), images["euler_a"]) and np.array_equal(image("euler_a"), images["euler_a"])
    assert not np.array_equal(image("euler_a", seed=4), images["euler_a"])
    assert make_scheduler("dpmsolver++", v_parameterization=True).config.prediction_type == "v_prediction"
    assert make_scheduler("dpmsolver").config.algorithm_type == "dpmsolver"
    with pytest.raises(UserError, match=r"sampler 'dpm\+\+2m' is unknown; use one of ddim, pndm"):
        make_scheduler("dpm++2m")
