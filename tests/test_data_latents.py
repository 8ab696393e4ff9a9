"""prepare_buckets_latents end to end on the tiny SDXL VAE: npz format, values, freshness, bad files."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import library.data.caching.latent_caching as latent_caching
from data_fixtures import gradient_image, write_broken_files, write_image
from finetune import prepare_buckets_latents
from library.data.buckets import BucketManager
from library.data.caching.latent_cache import CacheFingerprint, LatentCache, load_latent_cache, save_latent_cache
from library.data.caching.latent_encoding import load_vae_for_caching, pixels_to_tensor, seed_from_sha
from library.errors import UserError

SIZES = {"wide.png": (200, 120), "tall.jpg": (100, 150), "square.webp": (96, 96), "square2.png": (140, 140)}
BUCKET_ARGS = ["--max_resolution", "128,128", "--min_bucket_reso", "64", "--max_bucket_reso", "256", "--bucket_reso_steps", "32"]


@pytest.fixture
def dataset(tmp_path):
    folder = tmp_path / "train"
    for i, (name, size) in enumerate(SIZES.items()):
        write_image(folder / name, gradient_image(*size, seed=i), **({"quality": 95} if name.endswith(".jpg") else {}))
    meta = {Path_stem: {"caption": f"caption of {Path_stem}"} for Path_stem in ("wide", "tall", "square", "square2")}
    (tmp_path / "meta_clean.json").write_text(json.dumps(meta), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def tiny_vae(tiny_sdxl_dir):
    from library.models.tiny_sdxl import SINGLE_FILE_NAME

    return load_vae_for_caching(tiny_sdxl_dir / SINGLE_FILE_NAME, None, torch.float32, "cpu")


@pytest.fixture
def encode_counter(monkeypatch):
    """Counts images that go through the VAE during caching."""
    calls = []
    real = latent_caching.encode_latents

    def counting(vae, images, seeds):
        calls.extend(images)
        return real(vae, images, seeds)

    monkeypatch.setattr(latent_caching, "encode_latents", counting)
    return calls


def run(dataset, model, *extra):
    out = dataset.parent / "meta_lat.json"
    code = prepare_buckets_latents.main(
        [str(dataset), str(dataset.parent / "meta_clean.json"), str(out), str(model), *BUCKET_ARGS, *extra]
    )
    assert code == 0
    return json.loads(out.read_text(encoding="utf-8"))


def npz_of(folder, name):
    stem = name.rsplit(".", 1)[0]
    w, h = SIZES[name]
    return folder / f"{stem}_{w:04d}x{h:04d}_sdxl.npz"


def expected_latents(vae, image_path, placement, flipped=False):
    """Independent recomputation: resize (Lanczos up / box down), crop, VAE posterior sample."""
    import hashlib

    image = Image.open(image_path).convert("RGB")
    shrink = placement.resized_size[0] * placement.resized_size[1] < image.size[0] * image.size[1]
    image = image.resize(placement.resized_size, Image.BOX if shrink else Image.LANCZOS).crop(placement.crop_ltrb)
    if flipped:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    sha = hashlib.sha256(image_path.read_bytes()).hexdigest()
    with torch.no_grad():
        dist = vae.encode(pixels_to_tensor([image])).latent_dist
    noise = torch.randn(dist.mean.shape[1:], generator=torch.Generator().manual_seed(seed_from_sha(sha, flipped)))
    return (dist.mean[0] + dist.std[0] * noise).numpy(), dist.mean[0].numpy()


def test_npz_format_values_and_metadata(dataset, tiny_single_file, tiny_vae, encode_counter, capsys):
    meta = run(dataset, tiny_single_file, "--batch_size", "2", "--flip_aug")
    manager = BucketManager(False, (128, 128), 64, 256, 32)
    for name, size in SIZES.items():
        placement = manager.place(*size)
        cache_file = npz_of(dataset, name)
        with np.load(cache_file) as npz:
            assert {"latents", "original_size", "crop_ltrb", "latents_flipped", "image_sha256", "vae_fingerprint"} <= set(npz.files)
            assert npz["latents"].dtype == np.float32
            assert npz["latents"].shape == (4, placement.bucket[1] // 8, placement.bucket[0] // 8)
            assert npz["original_size"].tolist() == list(size)
            assert npz["crop_ltrb"].tolist() == list(placement.crop_ltrb)
        cache = load_latent_cache(cache_file)
        sample, mean = expected_latents(tiny_vae, dataset / name, placement)
        np.testing.assert_allclose(cache.latents, sample, rtol=1e-4, atol=1e-4)
        assert not np.allclose(cache.latents, mean, atol=1e-3)  # a sample, not the mean
        flipped, _ = expected_latents(tiny_vae, dataset / name, placement, flipped=True)
        np.testing.assert_allclose(cache.latents_flipped, flipped, rtol=1e-4, atol=1e-4)
        stem = name.rsplit(".", 1)[0]
        assert meta[stem] == {
            "caption": f"caption of {stem}",
            "image_size": list(size),
            "train_resolution": list(placement.bucket),
        }
    # tall 100x150 -> bucket 96x160 (closest aspect), resized 107x160, centre crop 5 px from the left
    assert manager.place(100, 150).bucket == (96, 160) and manager.place(100, 150).crop_ltrb == (5, 0, 101, 160)
    assert manager.place(200, 120).bucket == (160, 96)
    assert len(encode_counter) == 8  # four images, each also mirrored (the squares share a batch)
    out = capsys.readouterr().out
    assert "encoded: 4" in out and "images/s" in out and "bucket 96x160: 1" in out


def test_worked_crop_example_through_the_script(dataset, tiny_single_file):
    # 100x150 in a single 128x128 bucket: resized 128x192, cropped 32 px from the top (DESIGN.md 4.3 scaled by 1/8).
    run(dataset, tiny_single_file, "--min_bucket_reso", "128", "--max_bucket_reso", "128")
    assert load_latent_cache(npz_of(dataset, "tall.jpg")).crop_ltrb == (0, 32, 128, 160)
    assert load_latent_cache(npz_of(dataset, "tall.jpg")).resized_size == (128, 192)


def test_rerun_and_freshness(dataset, tiny_single_file, encode_counter, capsys):
    run(dataset, tiny_single_file)
    assert len(encode_counter) == 4
    mtimes = {name: npz_of(dataset, name).stat().st_mtime_ns for name in SIZES}
    encode_counter.clear()

    run(dataset, tiny_single_file)  # unchanged folder: no VAE work at all
    assert encode_counter == []
    assert "reused fresh caches: 4" in capsys.readouterr().out

    os.utime(dataset / "wide.png", (1e9, 1e9))  # timestamp-only change
    run(dataset, tiny_single_file)
    assert encode_counter == []

    pixels = np.asarray(Image.open(dataset / "square.webp")).copy()
    pixels[10:20, 10:20] = 0  # same size, different pixels
    Image.fromarray(pixels).save(dataset / "square.webp")
    capsys.readouterr()
    run(dataset, tiny_single_file)
    assert len(encode_counter) == 1
    assert "image content changed 1" in capsys.readouterr().out
    assert npz_of(dataset, "wide.png").stat().st_mtime_ns == mtimes["wide.png"]
    assert npz_of(dataset, "tall.jpg").stat().st_mtime_ns == mtimes["tall.jpg"]
    assert npz_of(dataset, "square.webp").stat().st_mtime_ns != mtimes["square.webp"]

    encode_counter.clear()
    run(dataset, tiny_single_file, "--max_bucket_reso", "128", "--min_bucket_reso", "128")  # bucket changes
    assert len(encode_counter) == 2  # the square images keep their 128x128 bucket, the others move


def test_foreign_cache_is_redone_unless_skip_existing(dataset, tiny_single_file, encode_counter):
    run(dataset, tiny_single_file)
    path = npz_of(dataset, "tall.jpg")
    with np.load(path) as npz:  # what kohya writes: no fingerprint keys
        kohya = {k: npz[k] for k in ("latents", "original_size", "crop_ltrb")}
    with open(path, "wb") as handle:
        np.savez(handle, **kohya)
    encode_counter.clear()
    run(dataset, tiny_single_file, "--skip_existing")
    assert encode_counter == []
    run(dataset, tiny_single_file)
    assert len(encode_counter) == 1


def test_broken_files_are_listed_and_leave_no_partial_file(dataset, tiny_single_file, capsys):
    expected = write_broken_files(dataset)
    write_image(dataset / "tiny.png", gradient_image(30, 30))  # smaller than a bucket step with no_upscale
    meta = run(dataset, tiny_single_file, "--bucket_no_upscale", "--max_data_loader_n_workers", "2")
    out = capsys.readouterr().out
    for name, fragment in expected.items():
        line = next(l for l in out.splitlines() if l.strip().startswith("skipped") and name in l)
        assert fragment in line
    assert "tiny.png" in out and "smaller than one bucket step" in out
    assert set(meta) == {"wide", "tall", "square", "square2"}
    produced = sorted(p.name for p in dataset.iterdir() if p.suffix == ".npz" or p.name.startswith("."))
    assert produced == sorted(npz_of(dataset, n).name for n in SIZES)


def test_nothing_usable_is_an_error(tmp_path, tiny_single_file):
    folder = tmp_path / "bad"
    write_broken_files(folder)
    (tmp_path / "meta.json").write_text("{}")
    with pytest.raises(UserError, match="no usable images"):
        prepare_buckets_latents.main([str(folder), str(tmp_path / "meta.json"), str(tmp_path / "out.json"), str(tiny_single_file)])
    assert not (tmp_path / "out.json").exists()


def test_nan_latents_name_the_image_and_keep_old_caches(dataset, tiny_single_file, monkeypatch):
    run(dataset, tiny_single_file)
    before = npz_of(dataset, "square.webp").read_bytes()  # the first image encoded
    monkeypatch.setattr(latent_caching, "encode_latents", lambda vae, images, seeds: np.full((len(images), 4, 16, 24), np.nan, np.float32))
    with pytest.raises(UserError, match=r"square\.webp: the VAE produced NaN.*fp16-fix"):
        run(dataset, tiny_single_file, "--overwrite", "--mixed_precision", "fp16")
    assert npz_of(dataset, "square.webp").read_bytes() == before
    assert not [p for p in dataset.iterdir() if p.name.startswith(".")]


def test_cache_file_round_trip_and_fingerprint_checks(tmp_path):
    from library.data.caching.latent_cache import cache_problem

    fingerprint = CacheFingerprint("abc", (64, 128), (0, 8, 64, 136), "vae1", flip_aug=False)
    cache = LatentCache(np.ones((4, 16, 8), np.float32), (50, 100), (0, 8, 64, 136), (64, 144))
    path = tmp_path / "x_0050x0100_sdxl.npz"
    save_latent_cache(path, cache, fingerprint)
    assert cache_problem(path, fingerprint) is None
    assert cache_problem(path, CacheFingerprint("abc", (64, 128), (0, 8, 64, 136), "vae2")) == "VAE changed"
    assert cache_problem(path, CacheFingerprint("abd", (64, 128), (0, 8, 64, 136), "vae1")) == "image content changed"
    assert cache_problem(path, CacheFingerprint("abc", (128, 64), (0, 0, 128, 64), "vae1")) == "bucket changed"
    assert cache_problem(path, CacheFingerprint("abc", (64, 128), (0, 8, 64, 136), "vae1", flip_aug=True)) == "flipped latents missing"
    assert load_latent_cache(path).original_size == (50, 100)
    path.write_bytes(b"garbage")
    assert cache_problem(path, fingerprint) == "unreadable cache"
    with pytest.raises(UserError, match="delete it"):
        load_latent_cache(path)
