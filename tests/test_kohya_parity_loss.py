"""Loss and noise formulas pinned to kohya sd-scripts (issue 15).

Expected numbers are hand-derived constants or a few lines re-deriving kohya's formula here
(train_util.get_huber_threshold_if_needed, custom_train_functions.apply_masked_loss /
pyramid_noise_like / apply_noise_offset, train_util.get_noise_noisy_latents_and_timesteps), never
computed with the helpers under test.
"""
from __future__ import annotations

import argparse
import math

import pytest
import torch
import torch.nn.functional as F

from library.errors import UserError
from library.training.objective import loss as loss_lib
from library.training.objective import noise as noise_lib
from library.training.config.config_checks import check_combinations
from library.training.config.options import OPTIONS


def make_args(**overrides) -> argparse.Namespace:
    values = {name: option.default for name, option in OPTIONS.items()}
    values.update(pretrained_model_name_or_path="model.safetensors", output_dir="out")
    values.update(overrides)
    return argparse.Namespace(**values)


def sdxl_alphas_cumprod() -> torch.Tensor:
    """The DDPM scaled_linear schedule written out (beta 0.00085..0.012, 1000 steps), in float64."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def test_masked_loss_is_mean_of_loss_times_mask_over_all_pixels():
    prediction, target = torch.zeros(1, 4, 2, 2), torch.full((1, 4, 2, 2), 3.0)  # l2 loss 9 everywhere
    mask = torch.tensor([[[[1.0, 0.5], [0.0, 0.0]]]])  # 1.5 of 4 pixels
    scheduler = noise_lib.make_noise_scheduler()
    loss = loss_lib.training_loss(loss_lib.LossOptions(), scheduler, prediction, target, torch.tensor([500]), torch.ones(1), mask)
    # kohya: loss * mask, then the mean over C, H, W: 9 * (1 + 0.5) / 4 (not 9 / 1.5 * 1.5 = 9)
    assert loss.item() == pytest.approx(3.375, rel=1e-6)


def test_huber_snr_schedule_ignores_huber_scale():
    scheduler = noise_lib.make_noise_scheduler()
    t = torch.tensor([0, 250, 999])
    args = dict(huber_c=0.1, huber_scale=2.0)
    snr_c = loss_lib.huber_c(loss_lib.LossOptions(huber_schedule="snr", **args), scheduler, t)
    alphas_cumprod = sdxl_alphas_cumprod()[t]
    sigmas = ((1 - alphas_cumprod) / alphas_cumprod).sqrt()
    expected = (1 - 0.1) / (1 + sigmas) ** 2 + 0.1  # no huber_scale in kohya's snr branch
    torch.testing.assert_close(snr_c.double(), expected, rtol=1e-5, atol=1e-6)
    constant = loss_lib.huber_c(loss_lib.LossOptions(huber_schedule="constant", **args), scheduler, t)
    assert constant.tolist() == pytest.approx([0.2, 0.2, 0.2])
    exponential = loss_lib.huber_c(loss_lib.LossOptions(huber_schedule="exponential", **args), scheduler, t)
    assert exponential.tolist() == pytest.approx([2.0 * math.exp(math.log(0.1) * s / 1000) for s in (0, 250, 999)], rel=1e-5)


def kohya_pyramid(noise, iterations, discount, generator):
    """kohya's pyramid_noise_like with its random draws taken from `generator` in our order."""
    b, c, h, w = noise.shape
    for i in range(iterations):
        r = torch.rand((), generator=generator).item() * 2 + 2
        hn, wn = max(1, int(h / r**i)), max(1, int(w / r**i))
        noise = noise + F.interpolate(torch.randn(b, c, hn, wn, generator=generator), size=(h, w), mode="bilinear") * discount**i
        if hn == 1 or wn == 1:
            break
    return noise / noise.std()


def test_multires_levels_start_at_full_resolution():
    latents = torch.zeros(2, 4, 16, 16)
    ours = noise_lib.training_noise(latents, noise_lib.NoiseOptions(multires_noise_iterations=3, multires_noise_discount=0.3),
                                    torch.Generator().manual_seed(7))
    generator = torch.Generator().manual_seed(7)
    base = torch.randn(latents.shape, generator=generator)
    torch.testing.assert_close(ours, kohya_pyramid(base, 3, 0.3, generator), rtol=1e-5, atol=1e-6)


def test_multires_one_level_is_two_full_resolution_fields():
    # Hand-derived: with one level kohya adds a second independent full-resolution field at weight
    # 0.3**0 = 1, so the result is (n + n') / std and correlates with n at 1/sqrt(2).
    latents = torch.zeros(16, 4, 32, 32)
    generator = torch.Generator().manual_seed(3)
    noise = noise_lib.training_noise(latents, noise_lib.NoiseOptions(multires_noise_iterations=1, multires_noise_discount=0.3), generator)
    plain = torch.randn(latents.shape, generator=torch.Generator().manual_seed(3))
    correlation = torch.corrcoef(torch.stack([noise.flatten(), plain.flatten()]))[0, 1].item()
    assert correlation == pytest.approx(2**-0.5, abs=0.01)
    assert noise.std().item() == pytest.approx(1.0, abs=1e-5)


def test_noise_offset_then_multires_both_apply():
    args = make_args(noise_offset=0.1, multires_noise_iterations=2, multires_noise_discount=0.5)
    check_combinations(args, {}, [], ())  # kohya accepts the pair
    latents = torch.zeros(2, 4, 8, 8)
    ours = noise_lib.training_noise(latents, noise_lib.NoiseOptions.from_args(args), torch.Generator().manual_seed(11))
    generator = torch.Generator().manual_seed(11)
    noise = torch.randn(latents.shape, generator=generator)
    noise = noise + 0.1 * torch.randn((2, 4, 1, 1), generator=generator)  # kohya's apply_noise_offset first
    torch.testing.assert_close(ours, kohya_pyramid(noise, 2, 0.5, generator), rtol=1e-5, atol=1e-6)


def test_refusals_as_kohya():
    with pytest.raises(UserError, match="scale_v_pred_loss_like_noise_pred only applies to v-prediction"):
        check_combinations(make_args(scale_v_pred_loss_like_noise_pred=True), {}, [], ())
    check_combinations(make_args(scale_v_pred_loss_like_noise_pred=True, v_parameterization=True), {}, [], ())
    with pytest.raises(UserError, match="adaptive_noise_scale adds to noise_offset"):
        check_combinations(make_args(adaptive_noise_scale=0.1), {}, [], ())
