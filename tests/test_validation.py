"""Validation loss as kohya's train_network.py: its fixed timesteps, batches counted by
max_validation_steps, the training loss function (checked against numbers computed here from the
formulas, not from the toolkit's helpers), and captions processed as in training with a fixed choice."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from library.training.objective import validation
from library.training.config.config_loader import resolve_config
from library.training.loop import Trainer
from tests.training_fixtures import base_config, flat, make_concept_images, write_config


def test_validation_timesteps_are_kohyas_four_inner_points():
    # kohya: np.linspace(min, max, 6, dtype=int)[1:-1]; worked out by hand here
    assert validation.validation_timesteps(None, None) == [200, 400, 600, 800]
    assert validation.validation_timesteps(100, 900) == [260, 420, 580, 740]
    assert validation.validation_timesteps(0, 999) == [199, 399, 599, 799]  # 199.8, 399.6, 599.4, 799.2 truncated
    assert validation.validation_timesteps(300, None) == [440, 580, 720, 860]
    assert validation.validation_timesteps(500, 500) == [500, 500, 500, 500]  # min == max: one fixed timestep


def test_validation_batches_follow_buckets_and_count_batches():
    def item(dataset, bucket):
        return SimpleNamespace(dataset_index=dataset, bucket=bucket)

    items = [item(0, (64, 64)), item(0, (64, 96)), item(0, (64, 64)), item(1, (64, 64)), item(0, (64, 64))]
    batches = validation.validation_batches(items, [2, 3], seed=5, limit=None)
    assert sorted(map(sorted, batches)) == [[0, 2], [1], [3], [4]]  # one bucket and one dataset per batch, no repeats
    assert batches == validation.validation_batches(items, [2, 3], seed=5, limit=None)  # a fixed order
    assert validation.validation_batches(items, [2, 3], seed=5, limit=2) == batches[:2]  # max_validation_steps = 2 batches


def _trainer(tmp_path, model, train_dir, **overrides) -> Trainer:
    config = base_config(model, train_dir, tmp_path / "out", **overrides)
    trainer = Trainer(resolve_config(["--config_file", str(write_config(tmp_path / "c.toml", flat(config)))]))
    trainer.setup()
    return trainer


def _record_unet(trainer, monkeypatch) -> list:
    """Every UNet call: (noisy latents, timesteps, prediction)."""
    calls, unet = [], trainer.model.unet
    forward = unet.forward

    def recording(sample, timestep, *args, **kwargs):
        out = forward(sample, timestep, *args, **kwargs)
        calls.append((sample.detach().clone(), timestep.detach().clone(), out.sample.detach().clone()))
        return out

    monkeypatch.setattr(unet, "forward", recording)
    return calls


def _zero_snr_alphas_cumprod() -> np.ndarray:
    """SDXL's scaled-linear schedule rescaled to zero terminal SNR (Lin et al. 2024, algorithm 1)."""
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    root = np.sqrt(np.cumprod(1.0 - betas))
    first, last = root[0], root[-1]
    root = (root - last) * first / (first - last)
    return root**2


def test_validation_is_the_training_loss_with_huber_min_snr_and_zero_terminal_snr(tmp_path, tiny_single_file, monkeypatch):
    """v-prediction, zero terminal SNR, huber loss on kohya's snr schedule and min-SNR gamma 5: the
    logged value equals the loss computed here from each recorded UNet call."""
    train_dir = tmp_path / "data"
    make_concept_images(train_dir / "1_ohwx", count=6, sizes=[(64, 64)])
    trainer = _trainer(tmp_path, tiny_single_file, train_dir, validation_split=0.5, validation_seed=3, train_batch_size=2,
                       max_validation_steps=1, v_parameterization=True, zero_terminal_snr=True, loss_type="huber",
                       huber_schedule="snr", huber_c=0.2, min_snr_gamma=5.0, min_timestep=100, max_timestep=900)
    assert len(trainer.val_items) == 3  # two batches of the training batch size: 2 + 1
    calls = _record_unet(trainer, monkeypatch)
    value = trainer.validation_loss()
    assert len(calls) == 4  # max_validation_steps = 1 batch, at 4 timesteps
    assert [int(t[0]) for _, t, _ in calls] == [260, 420, 580, 740]
    batch = validation.validation_batches(trainer.val_items, [2], 3, 1)[0]
    assert all(noisy.shape[0] == len(batch) for noisy, _, _ in calls)
    x0 = torch.stack([trainer.val_latents.get(i, False)[0] for i in batch]).double() * 0.13025
    alphas = _zero_snr_alphas_cumprod()
    expected = []
    for noisy, t, prediction in calls:
        a = float(alphas[int(t[0])])
        noise = (noisy.double() - a**0.5 * x0) / (1 - a) ** 0.5  # what the noise was
        target = a**0.5 * noise - (1 - a) ** 0.5 * x0  # v
        sigma = ((1 - a) / a) ** 0.5
        c = (1 - 0.2) / (1 + sigma) ** 2 + 0.2
        element = 2 * c * (torch.sqrt((prediction.double() - target) ** 2 + c**2) - c)
        snr = a / (1 - a)
        weight = min(snr, 5.0) / (snr + 1)  # min-SNR for v-prediction
        expected.append(float((element.mean(dim=(1, 2, 3)) * weight).mean()))
    assert value == pytest.approx(sum(expected) / len(expected), rel=1e-4)
    calls.clear()
    assert trainer.validation_loss() == value and len(calls) == 4  # fixed noise: the same number at every evaluation


def test_max_validation_steps_unset_uses_every_batch(tmp_path, tiny_single_file, monkeypatch):
    train_dir = tmp_path / "data"
    make_concept_images(train_dir / "1_ohwx", count=6, sizes=[(64, 64)])
    trainer = _trainer(tmp_path, tiny_single_file, train_dir, validation_split=0.5, train_batch_size=2)
    calls = _record_unet(trainer, monkeypatch)
    value = trainer.validation_loss()
    assert [n.shape[0] for n, _, _ in calls] in ([2] * 4 + [1] * 4, [1] * 4 + [2] * 4)  # both batches, 4 timesteps each
    assert [int(t[0]) for _, t, _ in calls] == [200, 400, 600, 800] * 2
    assert math.isfinite(value)


def test_validation_captions_are_processed_as_in_training_with_a_fixed_choice(tmp_path, tiny_single_file, monkeypatch):
    train_dir = tmp_path / "data"
    make_concept_images(train_dir / "1_ohwx", count=4, sizes=[(64, 64)], caption="ohwx;;;smile, {red|blue|green|white} hat")
    trainer = _trainer(tmp_path, tiny_single_file, train_dir, validation_split=0.5, train_batch_size=1,
                       caption_prefix="photo of", caption_suffix="outdoors", secondary_separator=";;;", enable_wildcard=True)
    seen = []
    real = validation.encode_captions

    def recording(model, captions, *args, **kwargs):
        seen.append(list(captions))
        return real(model, captions, *args, **kwargs)

    monkeypatch.setattr(validation, "encode_captions", recording)
    trainer.validation_loss()
    first = [caption for batch in seen for caption in batch]
    assert len(first) == 2
    for caption in first:
        # kohya replaces secondary_separator by caption_separator itself (no space)
        assert caption in {f"photo of ohwx,smile, {colour} hat outdoors" for colour in ("red", "blue", "green", "white")}
    seen.clear()
    trainer.validation_loss()
    assert [caption for batch in seen for caption in batch] == first  # the same choice at every evaluation
