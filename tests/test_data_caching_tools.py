"""tools/cache_latents.py and tools/cache_text_encoder_outputs.py over a minimal training config."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import library.data.caching.latent_caching as latent_caching
from data_fixtures import gradient_image, write_image
from finetune import prepare_buckets_latents
from library.data.caching.latent_cache import load_latent_cache
from library.errors import UserError
from tools import cache_latents, cache_text_encoder_outputs


def write_config(path, **values):
    lines = ["[model_arguments]"]
    for key, value in values.items():
        lines.append(f"{key} = {json.dumps(value)}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def encode_counter(monkeypatch):
    calls = []
    real = latent_caching.encode_latents
    monkeypatch.setattr(latent_caching, "encode_latents", lambda vae, images, seeds: calls.extend(images) or real(vae, images, seeds))
    return calls


def test_cache_latents_reuses_prepare_buckets_latents_caches(tmp_path, tiny_single_file, encode_counter):
    train = tmp_path / "train"
    write_image(train / "a.png", gradient_image(100, 150, seed=1))
    write_image(train / "b.png", gradient_image(160, 96, seed=2))
    (tmp_path / "meta_clean.json").write_text(json.dumps({"a": {"caption": "x"}, "b": {"caption": "y"}}))
    prepare_buckets_latents.main([str(train), str(tmp_path / "meta_clean.json"), str(tmp_path / "meta_lat.json"),
                                  str(tiny_single_file), "--max_resolution", "128,128", "--min_bucket_reso", "64",
                                  "--max_bucket_reso", "256", "--bucket_reso_steps", "32"])
    assert len(encode_counter) == 2
    config = write_config(tmp_path / "train.toml", pretrained_model_name_or_path=str(tiny_single_file),
                          train_data_dir=str(train), in_json=str(tmp_path / "meta_lat.json"), resolution="128,128")
    encode_counter.clear()
    assert cache_latents.main(["--config_file", str(config)]) == 0
    assert encode_counter == []  # same VAE, same buckets from meta_lat.json: nothing to do


def test_cache_latents_dreambooth_with_buckets(tmp_path, tiny_diffusers_dir, encode_counter, capsys):
    train = tmp_path / "train"
    write_image(train / "10_sks dog" / "a.jpg", gradient_image(200, 120, seed=3))
    write_image(train / "10_sks dog" / "b.png", gradient_image(64, 64, seed=4))
    config = write_config(tmp_path / "train.toml", pretrained_model_name_or_path=str(tiny_diffusers_dir),
                          train_data_dir=str(train), resolution="128,128", enable_bucket=True, min_bucket_reso=64,
                          max_bucket_reso=256, bucket_reso_steps=32, flip_aug=True)
    assert cache_latents.main(["--config_file", str(config)]) == 0
    cache = load_latent_cache(train / "10_sks dog" / "a_0200x0120_sdxl.npz")
    assert cache.latents.shape == (4, 96 // 8, 160 // 8) and cache.latents_flipped.shape == cache.latents.shape
    assert load_latent_cache(train / "10_sks dog" / "b_0064x0064_sdxl.npz").crop_ltrb == (0, 0, 128, 128)
    assert len(encode_counter) == 4


def test_text_encoder_outputs(tmp_path, tiny_single_file, tiny_sdxl, capsys):
    train = tmp_path / "train"
    write_image(train / "a.png", gradient_image(32, 32))
    write_image(train / "b.png", gradient_image(32, 32, seed=1))
    long_caption = ", ".join(f"tag{i}" for i in range(60))  # well over 75 tokens
    meta = {"a": {"caption": "a photo of sks dog", "tags": "dog, grass"}, "b": {"caption": long_caption}}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    config = write_config(tmp_path / "train.toml", pretrained_model_name_or_path=str(tiny_single_file),
                          train_data_dir=str(train), in_json=str(tmp_path / "meta.json"), resolution="64,64")
    assert cache_text_encoder_outputs.main(["--config_file", str(config)]) == 0
    with np.load(train / "a_te_outputs.npz") as npz:
        assert npz["hidden_state1"].shape == (77, 64) and npz["hidden_state2"].shape == (77, 128) and npz["pool2"].shape == (128,)
        hidden1, hidden2, pool2 = npz["hidden_state1"], npz["hidden_state2"], npz["pool2"]
    # Independent recomputation with the standard 77-token tokenisation ("caption, tags" as kohya joins them).
    text = "a photo of sks dog, dog, grass"
    ids1 = tiny_sdxl.tokenizer1(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    ids2 = tiny_sdxl.tokenizer2(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        out1 = tiny_sdxl.text_encoder1(ids1, output_hidden_states=True)
        out2 = tiny_sdxl.text_encoder2(ids2, output_hidden_states=True)
    np.testing.assert_allclose(hidden1, out1.hidden_states[-2][0].numpy(), atol=1e-5)
    np.testing.assert_allclose(hidden2, out2.hidden_states[-2][0].numpy(), atol=1e-5)
    np.testing.assert_allclose(pool2, out2.text_embeds[0].numpy(), atol=1e-5)
    assert not np.allclose(hidden2, out2.last_hidden_state[0].numpy(), atol=1e-3)  # penultimate, not last

    capsys.readouterr()
    cache_text_encoder_outputs.main(["--config_file", str(config)])
    assert "encoded: 0, reused fresh caches: 2" in capsys.readouterr().out
    meta["a"]["caption"] = "a photo of sks cat"
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    cache_text_encoder_outputs.main(["--config_file", str(config)])
    assert "encoded: 1, reused fresh caches: 1" in capsys.readouterr().out

    long_config = write_config(tmp_path / "long.toml", pretrained_model_name_or_path=str(tiny_single_file),
                               train_data_dir=str(train), in_json=str(tmp_path / "meta.json"), max_token_length=225,
                               resolution="64,64")
    cache_text_encoder_outputs.main(["--config_file", str(long_config)])
    with np.load(train / "b_te_outputs.npz") as npz:
        # kohya's layout for 225 tokens: <BOS>, 3 x 75 content states, the last chunk's final state.
        assert npz["hidden_state1"].shape == (227, 64) and npz["hidden_state2"].shape == (227, 128)
        first_chunk = npz["hidden_state1"][:76]
    # The first chunk is the first 75 tokens on their own, which is the plain truncated encoding.
    ids = tiny_sdxl.tokenizer1(long_caption, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        np.testing.assert_allclose(first_chunk, tiny_sdxl.text_encoder1(ids, output_hidden_states=True).hidden_states[-2][0, :76].numpy(), atol=1e-5)


def test_text_encoder_cache_refuses_changing_captions(tmp_path, tiny_single_file):
    train = tmp_path / "train"
    write_image(train / "1_x" / "a.png", gradient_image(32, 32))
    config = tmp_path / "c.toml"
    config.write_text(f'[model_arguments]\npretrained_model_name_or_path = "{tiny_single_file}"\n'
                      f'[dataset_arguments]\ntrain_data_dir = "{train}"\nshuffle_caption = true\nresolution = "64,64"\n')
    with pytest.raises(UserError, match="shuffle_caption change captions"):
        cache_text_encoder_outputs.main(["--config_file", str(config)])
    with pytest.raises(UserError, match="train_data_dir' is missing"):
        cache_latents.main(["--config_file", str(write_config(tmp_path / "d.toml", pretrained_model_name_or_path="x"))])
