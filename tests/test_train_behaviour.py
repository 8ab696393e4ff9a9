"""Training runs on the tiny model: it learns, it is reproducible, and equivalent setups agree."""
from __future__ import annotations

import pytest
import torch

from library.errors import UserError
from library.models.checkpoint_file import read_metadata
from tests.training_fixtures import lora_tensors, make_concept_images, run_training

CAPTION = "catwomen, 1girl, black suit"


@pytest.fixture(scope="module")
def dreambooth_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("dreambooth")
    make_concept_images(root / "10_catwomen", count=4, caption=CAPTION)
    return root


@pytest.fixture(scope="module")
def one_bucket_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("one_bucket")
    make_concept_images(root / "1_catwomen", count=2, caption=CAPTION, sizes=[(64, 64)])
    return root


def _denoising_loss(model_path, train_dir, lora_path=None) -> float:
    from library.data.caching.latent_cache import load_latent_cache
    from library.models.sdxl_conditioning import encode_captions, time_ids
    from library.models.sdxl_loader import load_sdxl
    from networks import lora

    model = load_sdxl(model_path)
    if lora_path is not None:
        network, _ = lora.create_network_from_weights(1.0, str(lora_path), model.vae, model.text_encoders, model.unet)
        network.apply_to(model.text_encoders, model.unet, True, True)
    caches = [load_latent_cache(p) for p in sorted(train_dir.rglob("*_sdxl.npz"))]
    assert len(caches) == 4
    latents = [torch.from_numpy(c.latents) * 0.13025 for c in caches]
    with torch.no_grad():
        context, pooled = encode_captions(model, [CAPTION] * len(latents), None)
    ids = time_ids([(c.original_size[1], c.original_size[0]) for c in caches], [(c.crop_ltrb[1], c.crop_ltrb[0]) for c in caches],
                   [(l.shape[1] * 8, l.shape[2] * 8) for l in latents])
    return _fixed_noise_mse(model.unet, latents, context, pooled, ids)


@torch.no_grad()
def _fixed_noise_mse(unet, latents, context, pooled, ids, timesteps=(200, 400, 600, 800)) -> float:
    """Mean epsilon-prediction MSE over every (image, timestep) with the same noise each call."""
    from library.training.objective.noise import make_noise_scheduler

    scheduler, total = make_noise_scheduler(), []
    for index, latent in enumerate(latents):
        generator = torch.Generator().manual_seed(index)
        for timestep in timesteps:
            noise = torch.randn(latent[None].shape, generator=generator)
            t = torch.tensor([timestep])
            prediction = unet(scheduler.add_noise(latent[None], noise, t), t, context[index : index + 1],
                              added_cond_kwargs={"text_embeds": pooled[index : index + 1], "time_ids": ids[index : index + 1]}).sample
            total.append(torch.nn.functional.mse_loss(prediction, noise).item())
    return sum(total) / len(total)


def test_lora_learns_the_training_images(tiny_single_file, dreambooth_dir, tmp_path):
    lora_path = run_training(tmp_path, tiny_single_file, dreambooth_dir, max_train_steps=24, learning_rate=1e-2,
                             network_dim=8, network_alpha=8.0, network_args=["conv_dim=8", "conv_alpha=8"],
                             cache_latents_to_disk=True, log_with="tensorboard", logging_dir=str(tmp_path / "logs"))
    before = _denoising_loss(tiny_single_file, dreambooth_dir)
    after = _denoising_loss(tiny_single_file, dreambooth_dir, lora_path)
    assert after < 0.95 * before, (before, after)
    from tests.test_train_run import logged

    average = [value for _, value in logged(tmp_path / "logs", "loss/average")]
    assert len(average) == 24 and average[-1] < 0.9 * average[0]  # the logged running loss falls


def test_same_seed_same_lora_and_flat_config_trains_identically(tiny_single_file, dreambooth_dir, tmp_path):
    sectioned = run_training(tmp_path, tiny_single_file, dreambooth_dir, name="sectioned")
    flat = run_training(tmp_path, tiny_single_file, dreambooth_dir, name="flat", flat_file=True)
    assert read_metadata(sectioned)["sshs_model_hash"] == read_metadata(flat)["sshs_model_hash"]
    a, b = lora_tensors(sectioned), lora_tensors(flat)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(a[k].abs().sum() > 0 for k in a if "lora_up" in k)  # it trained: up weights left zero
    other_seed = run_training(tmp_path, tiny_single_file, dreambooth_dir, name="other", seed=99)
    assert read_metadata(other_seed)["sshs_model_hash"] != read_metadata(flat)["sshs_model_hash"]


def test_gradient_accumulation_equals_a_larger_batch(tiny_single_file, one_bucket_dir, tmp_path):
    big = run_training(tmp_path, tiny_single_file, one_bucket_dir, name="big", max_train_steps=1, train_batch_size=2,
                       optimizer_type="SGDNesterov", learning_rate=0.5)
    accumulated = run_training(tmp_path, tiny_single_file, one_bucket_dir, name="acc", max_train_steps=1, train_batch_size=1,
                               gradient_accumulation_steps=2, optimizer_type="SGDNesterov", learning_rate=0.5)
    a, b = lora_tensors(big), lora_tensors(accumulated)
    assert any(a[k].abs().sum() > 0 for k in a if "lora_up" in k)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)


def test_cached_and_uncached_latents_give_the_same_first_step(tiny_single_file, one_bucket_dir, tmp_path):
    cached = run_training(tmp_path, tiny_single_file, one_bucket_dir, name="cached", max_train_steps=1, cache_latents=True)
    online = run_training(tmp_path, tiny_single_file, one_bucket_dir, name="online", max_train_steps=1, cache_latents=False)
    a, b = lora_tensors(cached), lora_tensors(online)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)


def test_xformers_needs_a_gpu_and_fp8_a_compute_dtype(tiny_single_file, one_bucket_dir, tmp_path):
    with pytest.raises(UserError, match=r"xformers needs a CUDA GPU.*use sdpa = true"):
        run_training(tmp_path, tiny_single_file, one_bucket_dir, name="xf", xformers=True)
    with pytest.raises(UserError, match=r"fp8_base / fp8_base_unet need mixed_precision = \"bf16\" or \"fp16\""):
        run_training(tmp_path, tiny_single_file, one_bucket_dir, name="fp8", fp8_base=True)


def test_pixel_augmentations_train_without_a_latent_cache(tiny_single_file, dreambooth_dir, tmp_path):
    path = run_training(tmp_path, tiny_single_file, dreambooth_dir, name="aug", max_train_steps=2, cache_latents=False,
                        color_aug=True, random_crop=True, flip_aug=True)
    assert path.exists()
    faces = make_concept_images(tmp_path / "faces" / "1_catwomen", count=2, sizes=[(96, 96)])
    for index, image in enumerate(faces):
        image.rename(image.with_name(f"face{index}_48_48_30_30.png"))
    assert run_training(tmp_path, tiny_single_file, tmp_path / "faces", name="face", max_train_steps=2, cache_latents=False,
                        enable_bucket=False, face_crop_aug_range="2.0,3.0").exists()
    with pytest.raises(UserError, match=r"face_crop_aug_range .* cannot be combined with enable_bucket"):
        run_training(tmp_path, tiny_single_file, tmp_path / "faces", name="face2", max_train_steps=1, cache_latents=False,
                     face_crop_aug_range="2.0,3.0")
    with pytest.raises(UserError, match=r"cache_latents cannot be combined with color_aug, random_crop or face_crop_aug_range"):
        run_training(tmp_path, tiny_single_file, dreambooth_dir, name="aug_cached", max_train_steps=1, cache_latents=True,
                     random_crop=True)


def test_loader_workers_give_the_same_lora_as_the_main_process(tiny_single_file, dreambooth_dir, tmp_path):
    """Uncached, augmented images decoded in 2 persistent worker processes over 2 epochs: bit-identical
    to preparing them in the main process (every sample is seeded by itself)."""
    common = dict(max_train_steps=4, cache_latents=False, color_aug=True, random_crop=True, flip_aug=True)
    main = run_training(tmp_path, tiny_single_file, dreambooth_dir, name="main", max_data_loader_n_workers=0, **common)
    workers = run_training(tmp_path, tiny_single_file, dreambooth_dir, name="workers", max_data_loader_n_workers=2,
                           persistent_data_loader_workers=True, **common)
    a, b = lora_tensors(main), lora_tensors(workers)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_loader_workers_start_only_for_uncached_samples(tiny_single_file, one_bucket_dir, tmp_path, monkeypatch):
    from library.training.inputs import pixel_loading

    made = []
    original = pixel_loading.PixelLoader.__init__

    def spy(self, pipeline, cached, workers, persistent):
        made.append((len(pipeline.items), len(cached), workers, persistent))
        original(self, pipeline, cached, workers, persistent)

    monkeypatch.setattr(pixel_loading.PixelLoader, "__init__", spy)
    run_training(tmp_path, tiny_single_file, one_bucket_dir, name="cached", max_train_steps=1, cache_latents=True,
                 max_data_loader_n_workers=2)
    assert made == []  # every latent cached: nothing for workers to do
    run_training(tmp_path, tiny_single_file, one_bucket_dir, name="online", max_train_steps=1, cache_latents=False,
                 max_data_loader_n_workers=8)
    assert made == [(2, 0, min(8, __import__("os").cpu_count()), False)]  # capped at the CPU count, as kohya
