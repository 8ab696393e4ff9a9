"""Numerical checks of each training option family, without running a whole training."""
from __future__ import annotations

import argparse
import random

import numpy as np
import pytest
import torch

from library.errors import UserError
from library.training.objective import loss as loss_lib
from library.training.objective import noise as noise_lib
from library.data.caption_processing import CaptionOptions, process_caption
from library.training.config.options import OPTIONS


def make_args(**overrides) -> argparse.Namespace:
    values = {name: option.default for name, option in OPTIONS.items()}
    values.update(overrides)
    return argparse.Namespace(**values)


@pytest.fixture(scope="module")
def scheduler():
    return noise_lib.make_noise_scheduler()


def test_sdxl_noise_schedule(scheduler):
    betas = scheduler.betas
    assert len(betas) == 1000
    assert betas[0].item() == pytest.approx(0.00085, rel=1e-4) and betas[-1].item() == pytest.approx(0.012, rel=1e-4)
    # scaled_linear: sqrt(beta) is linear in t
    assert (betas.sqrt()[1:] - betas.sqrt()[:-1]).std() < 1e-7


def reference_alphas_cumprod(zero_terminal_snr: bool = False) -> torch.Tensor:
    """SDXL's schedule written out in float64 (scaled_linear betas 0.00085..0.012, 1000 steps); with
    zero terminal SNR rescaled as Lin et al. 2024 algorithm 1 (kohya's enforce_zero_terminal_snr,
    diffusers' rescale_zero_terminal_snr): sqrt(alpha_bar) shifted to end at 0 and scaled to keep its start."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    if zero_terminal_snr:
        root = alphas_cumprod.sqrt()
        root = (root - root[-1]) * root[0] / (root[0] - root[-1])
        alphas_cumprod = root**2
    return alphas_cumprod


def reference_snr(timesteps, zero_terminal_snr: bool = False) -> torch.Tensor:
    alphas_cumprod = reference_alphas_cumprod(zero_terminal_snr)[timesteps]
    return alphas_cumprod / (1.0 - alphas_cumprod)  # kohya's all_snr: (sqrt(a) / sqrt(1 - a))**2


def test_min_snr_weights_on_known_timesteps(scheduler):
    timesteps = torch.tensor([10, 500, 999])
    snr = reference_snr(timesteps)
    weights = loss_lib.timestep_weights(loss_lib.LossOptions(min_snr_gamma=5.0), scheduler, timesteps)
    # kohya's apply_snr_weight: min(snr, gamma) / snr, and / (snr + 1) for v-prediction
    torch.testing.assert_close(weights.double(), torch.minimum(snr, torch.tensor(5.0, dtype=torch.float64)) / snr, rtol=1e-4, atol=0)
    assert weights[0] < 0.1 and weights[2] == pytest.approx(1.0)  # high-SNR steps are down-weighted
    v_weights = loss_lib.timestep_weights(loss_lib.LossOptions(min_snr_gamma=5.0, v_parameterization=True), scheduler, timesteps)
    torch.testing.assert_close(v_weights.double(), torch.minimum(snr, torch.tensor(5.0, dtype=torch.float64)) / (snr + 1),
                               rtol=1e-4, atol=0)
    assert snr[2].item() == pytest.approx(0.004682, rel=1e-3)  # alpha_bar(999) = 0.004660: the SNR SDXL ends at


def test_debiased_and_v_pred_scaling(scheduler):
    t = torch.tensor([0, 100, 900])
    snr = torch.clamp(reference_snr(t), max=1000.0)  # kohya caps the SNR at 1000 (t = 0 would give ~1175)
    assert reference_snr(t)[0] > 1000
    torch.testing.assert_close(loss_lib.timestep_weights(loss_lib.LossOptions(debiased_estimation_loss=True), scheduler, t).double(),
                               1 / snr.sqrt(), rtol=1e-4, atol=0)
    torch.testing.assert_close(loss_lib.timestep_weights(loss_lib.LossOptions(debiased_estimation_loss=True, v_parameterization=True),
                                                         scheduler, t).double(), 1 / (snr + 1), rtol=1e-4, atol=0)
    torch.testing.assert_close(loss_lib.timestep_weights(loss_lib.LossOptions(scale_v_pred_loss_like_noise_pred=True), scheduler, t).double(),
                               snr / (snr + 1), rtol=1e-4, atol=0)


def test_loss_types_and_huber_schedule(scheduler):
    prediction, target = torch.tensor([[0.0, 3.0]]), torch.tensor([[1.0, 0.0]])
    assert loss_lib.elementwise_loss(prediction, target, "l2").tolist() == [[1.0, 9.0]]
    assert loss_lib.elementwise_loss(prediction, target, "l1").tolist() == [[1.0, 3.0]]
    c = torch.tensor([0.1])
    huber = loss_lib.elementwise_loss(prediction, target, "huber", c)
    torch.testing.assert_close(huber, 2 * 0.1 * (torch.sqrt(torch.tensor([[1.0, 9.0]]) + 0.01) - 0.1))
    smooth = loss_lib.elementwise_loss(prediction, target, "smooth_l1", c)
    torch.testing.assert_close(smooth, huber / 0.1)
    t = torch.tensor([0, 999])
    constant = loss_lib.huber_c(loss_lib.LossOptions(huber_schedule="constant", huber_c=0.1), scheduler, t)
    exponential = loss_lib.huber_c(loss_lib.LossOptions(huber_schedule="exponential", huber_c=0.1), scheduler, t)
    snr_c = loss_lib.huber_c(loss_lib.LossOptions(huber_schedule="snr", huber_c=0.1), scheduler, t)
    assert constant.tolist() == pytest.approx([0.1, 0.1])
    assert exponential[0] == pytest.approx(1.0) and exponential[1] == pytest.approx(0.1, rel=0.01)
    assert snr_c[0] > 0.9 and snr_c[1] == pytest.approx(0.1, abs=0.01)  # c falls as noise grows


def test_masked_loss_ignores_masked_pixels():
    prediction = torch.zeros(1, 4, 2, 2)
    target = torch.zeros(1, 4, 2, 2)
    target[..., 0, 0] = 10.0
    mask = torch.ones(1, 1, 2, 2)
    mask[..., 0, 0] = 0
    assert loss_lib.reduce_per_sample(loss_lib.elementwise_loss(prediction, target, "l2"), mask).item() == 0.0
    assert loss_lib.reduce_per_sample(loss_lib.elementwise_loss(prediction, target, "l2")).item() == pytest.approx(25.0)


def test_prior_loss_weight_scales_regularisation_samples(scheduler):
    args = make_args()
    prediction, target = torch.ones(2, 4, 2, 2), torch.zeros(2, 4, 2, 2)
    t = torch.tensor([500, 500])
    plain = loss_lib.training_loss(loss_lib.LossOptions.from_args(args), scheduler, prediction, target, t, torch.tensor([1.0, 1.0]))
    weighted = loss_lib.training_loss(loss_lib.LossOptions.from_args(args), scheduler, prediction, target, t, torch.tensor([1.0, 0.5]))
    assert plain.item() == pytest.approx(1.0) and weighted.item() == pytest.approx(0.75)


def test_noise_offset_statistics():
    latents = torch.zeros(512, 4, 8, 8)
    plain = noise_lib.training_noise(latents, noise_lib.NoiseOptions(), torch.Generator().manual_seed(0))
    offset = noise_lib.training_noise(latents, noise_lib.NoiseOptions(noise_offset=0.1), torch.Generator().manual_seed(0))
    channel_means_plain = plain.mean(dim=(2, 3)).std().item()
    channel_means_offset = offset.mean(dim=(2, 3)).std().item()
    # per-channel means: N(0, 1/64) without offset, plus N(0, 0.1^2) with it
    assert channel_means_plain == pytest.approx(0.125, rel=0.1)
    assert channel_means_offset == pytest.approx((0.125**2 + 0.1**2) ** 0.5, rel=0.1)
    random_strength = noise_lib.training_noise(latents, noise_lib.NoiseOptions(noise_offset=0.1, noise_offset_random_strength=True), torch.Generator().manual_seed(0))
    assert channel_means_plain < random_strength.mean(dim=(2, 3)).std().item() < channel_means_offset


def test_adaptive_noise_scale_grows_with_latent_mean():
    generator = torch.Generator().manual_seed(0)
    bright = torch.full((512, 4, 8, 8), 2.0)
    noise = noise_lib.training_noise(bright, noise_lib.NoiseOptions(noise_offset=0.05, adaptive_noise_scale=0.1), generator)
    assert noise.mean(dim=(2, 3)).std().item() == pytest.approx((0.125**2 + 0.25**2) ** 0.5, rel=0.1)


def test_multires_noise_is_normalised_and_correlated():
    noise = noise_lib.training_noise(torch.zeros(64, 4, 32, 32), noise_lib.NoiseOptions(multires_noise_iterations=6, multires_noise_discount=0.3),
                                     torch.Generator().manual_seed(0))
    assert noise.std().item() == pytest.approx(1.0, abs=1e-3)
    plain = torch.randn(64, 4, 32, 32, generator=torch.Generator().manual_seed(0))

    def neighbour_correlation(x):
        return torch.corrcoef(torch.stack([x[..., :-1].flatten(), x[..., 1:].flatten()]))[0, 1].item()

    # Low-frequency components correlate adjacent pixels (plain noise: 0 +- 0.002 here).
    assert abs(neighbour_correlation(plain)) < 0.01 and neighbour_correlation(noise) > 0.02


def test_ip_noise_gamma_perturbs_input_not_target(scheduler):
    latents = torch.zeros(1, 4, 8, 8)
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([999])
    plain = noise_lib.noisy_latents(scheduler, latents, noise, t, noise_lib.NoiseOptions(), torch.Generator().manual_seed(2))
    perturbed = noise_lib.noisy_latents(scheduler, latents, noise, t, noise_lib.NoiseOptions(ip_noise_gamma=0.1), torch.Generator().manual_seed(2))
    difference = (perturbed - plain) / scheduler.alphas_cumprod[999].sub(1).neg().sqrt()
    assert difference.std().item() == pytest.approx(0.1, rel=0.2)
    assert torch.equal(noise_lib.prediction_target(scheduler, latents, noise, t, False), noise)


def test_timestep_range():
    t = noise_lib.sample_timesteps(10_000, 200, 300, torch.Generator().manual_seed(0))
    assert t.min().item() == 200 and t.max().item() == 299
    generator = torch.Generator().manual_seed(0)
    assert noise_lib.sample_timesteps(3, 500, 500, generator).tolist() == [500, 500, 500]  # kohya: min == max is a fixed timestep
    assert torch.equal(generator.get_state(), torch.Generator().manual_seed(0).get_state())  # and draws nothing


def test_zero_terminal_snr_and_v_prediction():
    scheduler = noise_lib.make_noise_scheduler(zero_terminal_snr=True, v_parameterization=True)
    expected = reference_alphas_cumprod(zero_terminal_snr=True)
    torch.testing.assert_close(scheduler.alphas_cumprod.double(), expected, rtol=1e-4, atol=1e-7)
    assert scheduler.alphas_cumprod[0].item() == pytest.approx(1 - 0.00085, rel=1e-6)  # the start is kept
    assert scheduler.alphas_cumprod[-1].item() == 0.0
    assert scheduler.config.prediction_type == "v_prediction"
    t = torch.tensor([200, 600, 999])
    snr = reference_snr(t, zero_terminal_snr=True)
    # kohya's min-SNR for v-prediction on the rescaled schedule: min(snr, 5) / (snr + 1); 0 at the last step
    weights = loss_lib.timestep_weights(loss_lib.LossOptions(min_snr_gamma=5.0, v_parameterization=True), scheduler, t)
    torch.testing.assert_close(weights.double(), torch.minimum(snr, torch.tensor(5.0, dtype=torch.float64)) / (snr + 1),
                               rtol=1e-4, atol=1e-7)
    assert weights[2].item() == 0.0
    # v target: sqrt(a) * noise - sqrt(1 - a) * x0; at the last step it is -x0
    latents, noise = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    a = expected[t].float().view(-1, 1, 1, 1)
    torch.testing.assert_close(noise_lib.prediction_target(scheduler, latents, noise, t, True),
                               a.sqrt() * noise - (1 - a).sqrt() * latents, rtol=1e-4, atol=1e-5)


def test_keep_tokens_stay_first_when_shuffling():
    options = CaptionOptions(shuffle_caption=True, keep_tokens=2)
    caption = "catwomen, 1girl, black suit, mask, whip, night, city, rooftop"
    seen = set()
    for seed in range(30):
        out = process_caption(caption, options, random.Random(seed)).split(", ")
        assert out[:2] == ["catwomen", "1girl"] and sorted(out[2:]) == sorted(caption.split(", ")[2:])
        seen.add(tuple(out))
    assert len(seen) > 10


def test_keep_tokens_separator_secondary_separator_and_affixes():
    options = CaptionOptions(shuffle_caption=True, keep_tokens_separator="|||", secondary_separator=";;;",
                             caption_prefix="masterpiece,", caption_suffix=", best")
    out = process_caption("catwomen ||| black;;;suit, mask, whip ||| night", options, random.Random(3))
    parts = out.split(", ")
    assert parts[:2] == ["masterpiece", "catwomen"] and parts[-2:] == ["night", "best"]
    assert "black,suit" in out  # the joined pair moved as one tag; kohya restores caption_separator


def test_caption_dropout_tag_dropout_wildcards_and_warmup():
    assert process_caption("a, b", CaptionOptions(caption_dropout_rate=1.0), random.Random(0)) == ""
    assert process_caption("a, b", CaptionOptions(caption_dropout_every_n_epochs=2), random.Random(0), epoch=4) == ""
    kept = [len(process_caption(", ".join("abcdefghij"), CaptionOptions(caption_tag_dropout_rate=0.5), random.Random(s)).split(", "))
            for s in range(200)]
    assert sum(kept) / len(kept) == pytest.approx(5, abs=0.5)
    choices = {process_caption("a {red|blue} cat", CaptionOptions(enable_wildcard=True), random.Random(s)) for s in range(20)}
    assert choices == {"a red cat", "a blue cat"}
    warm = CaptionOptions(token_warmup_min=1, token_warmup_step=10)
    assert process_caption("a, b, c, d, e", warm, random.Random(0), step=0) == "a"
    assert process_caption("a, b, c, d, e", warm, random.Random(0), step=5) == "a, b, c"
    assert process_caption("a, b, c, d, e", warm, random.Random(0), step=10) == "a, b, c, d, e"


def test_long_prompt_chunks_and_equality_with_diffusers(tiny_sdxl):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    from library.models.sdxl_conditioning import chunked_input_ids, encode_captions

    long_caption = ", ".join(f"tag{i}" for i in range(40))  # about 160 tokens: 3 chunks, the last padded
    ids = chunked_input_ids(tiny_sdxl.tokenizer2, [long_caption], 225)
    assert ids.shape == (1, 3, 77) and ids[0, 0, 0] == 49406 and ids[0, 0, 76] == 49407
    assert (ids[0, 2] == 0).sum() > 0  # TE2 pads with "!" (0)
    with torch.no_grad():
        context, pooled = encode_captions(tiny_sdxl, [long_caption], 225)
        assert context.shape == (1, 227, 192) and pooled.shape == (1, 128)
        pipe = StableDiffusionXLPipeline(vae=tiny_sdxl.vae, text_encoder=tiny_sdxl.text_encoder1, text_encoder_2=tiny_sdxl.text_encoder2,
                                         tokenizer=tiny_sdxl.tokenizer1, tokenizer_2=tiny_sdxl.tokenizer2, unet=tiny_sdxl.unet,
                                         scheduler=EulerDiscreteScheduler())
        expected, _, expected_pooled, _ = pipe.encode_prompt(["a photo of a cat"], do_classifier_free_guidance=False)
        ours, ours_pooled = encode_captions(tiny_sdxl, ["a photo of a cat"], None)
    torch.testing.assert_close(ours, expected)
    torch.testing.assert_close(ours_pooled, expected_pooled)


@pytest.mark.parametrize("name", ["AdamW", "Lion", "SGDNesterov", "Prodigy", "AdaFactor", "DAdaptAdam", "AdamWScheduleFree", "torch.optim.RMSprop"])
def test_optimizers_build_and_step(name):
    from library.training.optim.optimizers import build_optimizer

    param = torch.nn.Parameter(torch.ones(4))
    args = make_args(optimizer_type=name, learning_rate=1e-2 if name not in ("Prodigy", "DAdaptAdam") else 1.0,
                     optimizer_args=["weight_decay=0.0"] if name != "AdaFactor" else ["relative_step=False", "scale_parameter=False"])
    optimizer = build_optimizer(args, [{"params": [param]}])
    if hasattr(optimizer, "train"):
        optimizer.train()
    param.grad = torch.ones(4)
    optimizer.step()
    assert not torch.equal(param.detach(), torch.ones(4))


def test_torch_optimizers_take_the_fused_update_with_the_same_result():
    """AdamW / SGDNesterov run torch's fused kernels on the CPU too (5-6x faster than multi-tensor for
    a LoRA's small tensors); the update equals the multi-tensor one; optimizer_args still choose."""
    from library.training.optim.optimizers import build_optimizer

    shapes = [(4, 64), (64, 4), (4, 32, 3, 3), (320, 4)]
    torch.manual_seed(0)
    start = [torch.randn(shape) for shape in shapes]
    grads = [[torch.randn(shape) for shape in shapes] for _ in range(3)]

    def train(name, optimizer_args):
        params = [torch.nn.Parameter(tensor.clone()) for tensor in start]
        optimizer = build_optimizer(make_args(optimizer_type=name, learning_rate=1e-2, optimizer_args=optimizer_args),
                                    [{"params": params}])
        for step_grads in grads:
            for param, grad in zip(params, step_grads):
                param.grad = grad.clone()
            optimizer.step()
        return optimizer, params

    for name in ("AdamW", "SGDNesterov"):
        fused, fused_params = train(name, ["weight_decay=0.01"])
        chosen, chosen_params = train(name, ["weight_decay=0.01", "foreach=True"])
        assert fused.defaults["fused"] is True and not fused.defaults["foreach"]
        assert chosen.defaults["foreach"] is True and not chosen.defaults["fused"]
        for a, b in zip(fused_params, chosen_params):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
            assert not torch.equal(a, torch.zeros_like(a))
    prodigy, _ = train("Prodigy", [])
    assert "fused" not in prodigy.defaults  # not a torch.optim class: left as it is

def test_adafactor_relative_step_follows_kohya():
    from library.training.config.kohya_compat import apply_kohya_compat
    from library.training.optim.optimizers import build_optimizer

    args, notices = make_args(optimizer_type="AdaFactor", lr_scheduler="constant"), []
    apply_kohya_compat(args, {}, notices)  # the resolution switches the schedule, once
    assert args.lr_scheduler == "adafactor" and any("becomes 'adafactor'" in n for n in notices)
    optimizer = build_optimizer(args, [{"params": [torch.nn.Parameter(torch.ones(2))], "lr": 1e-4}])
    assert optimizer.defaults["relative_step"] is True
    kept = make_args(optimizer_type="AdaFactor", lr_scheduler="constant", optimizer_args=["relative_step=False"])
    apply_kohya_compat(kept, {}, [])
    assert kept.lr_scheduler == "constant"


def test_bad_optimizer_names_and_args():
    from library.training.optim.optimizers import build_optimizer

    with pytest.raises(UserError, match=r"optimizer_type 'AdamX' is unknown"):
        build_optimizer(make_args(optimizer_type="AdamX"), [{"params": [torch.nn.Parameter(torch.ones(1))]}])
    with pytest.raises(UserError, match=r"optimizer_args for AdamW: .*unexpected keyword argument 'betaz'"):
        build_optimizer(make_args(optimizer_args=["betaz=(0.9,0.99)"]), [{"params": [torch.nn.Parameter(torch.ones(1))]}])


@pytest.mark.parametrize("name,warmup,expected", [
    ("constant_with_warmup", 0.1, [0.0, 0.1, 1.0, 1.0]),
    ("linear", 2, [0.0, 0.5, 1.0, 0.875]),
    ("cosine", 0, [1.0, 1.0, 0.96194, 0.85355]),
])
def test_lr_schedulers_with_warmup_steps_or_fraction(name, warmup, expected):
    from library.training.optim.lr_schedulers import build_lr_scheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=1.0)
    scheduler = build_lr_scheduler(make_args(lr_scheduler=name, lr_warmup_steps=warmup), optimizer, total_steps=20 if warmup == 0.1 else 10)
    lrs = []
    for step in range(4):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    if name == "constant_with_warmup":  # 10% of 20 steps = 2 warm-up steps
        assert lrs == pytest.approx([0.0, 0.5, 1.0, 1.0])
    elif name == "cosine":
        assert lrs == pytest.approx([1.0, 0.97553, 0.90451, 0.79389], rel=1e-4)
    else:
        assert lrs == pytest.approx(expected)


def test_prompt_weight_parsing():
    from library.models.prompt_weights import parse_weighted

    assert parse_weighted("a (cat:1.5) on [grass]") == [("a ", 1.0), ("cat", 1.5), (" on ", 1.0), ("grass", pytest.approx(1 / 1.1))]
    assert parse_weighted("((red)) hat, \\(x\\)") == [("red", pytest.approx(1.21)), (" hat, (x)", 1.0)]
    assert parse_weighted("a (b [c]:2) d") == [("a ", 1.0), ("b ", 2.0), ("c", pytest.approx(2 / 1.1)), (" d", 1.0)]


def test_weighted_captions_scale_only_the_emphasised_tokens(tiny_sdxl):
    from library.models.sdxl_conditioning import encode_captions

    with torch.no_grad():
        plain, plain_pooled = encode_captions(tiny_sdxl, ["a photo of a cat"], None)
        unit, _ = encode_captions(tiny_sdxl, ["a photo of a cat"], None, weighted=True)
        emphasised, pooled = encode_captions(tiny_sdxl, ["a photo of a (cat:1.5)"], None, weighted=True)
    torch.testing.assert_close(unit, plain)  # weight 1 everywhere changes nothing
    torch.testing.assert_close(pooled, plain_pooled)  # pooled is not weighted
    # the cat token (position 5) is scaled 1.5x relative to the others, then the mean is restored
    ratio = emphasised[0, 5] / emphasised[0, 2]
    expected = 1.5 * plain[0, 5] / plain[0, 2]
    torch.testing.assert_close(ratio, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(emphasised.mean(), plain.mean(), rtol=1e-4, atol=1e-6)


def test_random_crop_and_color_aug(tmp_path):
    from PIL import Image

    from library.data.augmentation import color_augment, random_crop_placement
    from library.data.buckets import place_in_bucket

    placement = place_in_bucket(800, 1200, (1024, 1024))  # resized 1024x1536: 512 px of vertical slack
    crops = {random_crop_placement(placement, random.Random(s)).crop_ltrb for s in range(50)}
    assert len(crops) > 20
    assert all(l == 0 and r == 1024 and 0 <= t <= 512 and b - t == 1024 for l, t, r, b in crops)
    assert random_crop_placement(placement, random.Random(3)) == random_crop_placement(placement, random.Random(3))

    image = Image.new("RGB", (32, 32), (200, 80, 40))
    changed = sum(color_augment(image, random.Random(s)).tobytes() != image.tobytes() for s in range(300))
    assert 70 < changed < 130  # a third of the steps
    assert color_augment(image, random.Random(5)).size == (32, 32)


def test_on_the_fly_random_crop_encodes_the_crop_it_reports(tiny_sdxl, tmp_path):
    from library.data.buckets import place_in_bucket, resize_and_crop
    from library.data.images import load_rgb
    from library.data.caching.latent_encoding import encode_latents, seed_from_sha
    from library.training.config.dataset_config import SubsetSpec
    from library.training.inputs.latent_source import LatentSource
    from library.training.inputs.train_items import TrainItem
    from tests.training_fixtures import make_concept_images

    path = make_concept_images(tmp_path, count=1, sizes=[(64, 96)])[0]
    item = TrainItem(path, "x", SubsetSpec(random_crop=True), place_in_bucket(64, 96, (64, 64)))
    source = LatentSource([item], tiny_sdxl.vae, make_args(), [])
    latents, _, crop = source.get(0, False, random.Random(7))
    from library.data.augmentation import random_crop_placement

    assert crop == random_crop_placement(item.placement, random.Random(7)).crop_ltrb
    assert {source.get(0, False, random.Random(s))[2] for s in range(10)} != {crop}  # crops vary per step
    expected_image = resize_and_crop(load_rgb(path), random_crop_placement(item.placement, random.Random(7)))
    expected = encode_latents(tiny_sdxl.vae, [expected_image], [seed_from_sha(source.sha(0))])[0]
    assert np.allclose(latents.numpy(), expected, atol=1e-6)


def test_face_crop_keeps_the_face_centred_at_the_requested_scale():
    from library.data.augmentation import face_crop_placement, face_from_file_name
    from library.data.buckets import place_in_bucket

    assert face_from_file_name("photo_400_300_100_120.png") == (400, 300, 100, 120)
    assert face_from_file_name("img1.png") is None
    placement = place_in_bucket(1000, 800, (256, 256))
    face = (400, 300, 100, 120)
    for seed in range(20):
        crop = face_crop_placement(placement, face, (2.0, 4.0), random.Random(seed))
        scale = crop.resized_size[0] / 1000
        assert 256 / (120 * 4.0) - 0.01 <= scale <= 256 / (120 * 2.0) + 0.01  # face spans 1/4 .. 1/2 of the crop
        left, top, right, bottom = crop.crop_ltrb
        assert right - left == 256 and bottom - top == 256
        assert right <= crop.resized_size[0] and bottom <= crop.resized_size[1]
        face_x, face_y = 400 * scale, 300 * scale
        assert abs((left + right) / 2 - face_x) <= 1 or left == 0 or right == crop.resized_size[0]
        assert abs((top + bottom) / 2 - face_y) <= 1 or top == 0 or bottom == crop.resized_size[1]


def test_objective_options_take_the_config_defaults():
    """The noise and loss functions take small option records; their defaults are the config's."""
    args = make_args()
    assert noise_lib.NoiseOptions() == noise_lib.NoiseOptions.from_args(args)
    assert loss_lib.LossOptions() == loss_lib.LossOptions.from_args(args)
    changed = make_args(noise_offset=0.05, loss_type="huber", min_snr_gamma=5.0)
    assert noise_lib.NoiseOptions.from_args(changed).noise_offset == 0.05
    assert loss_lib.LossOptions.from_args(changed) == loss_lib.LossOptions(loss_type="huber", min_snr_gamma=5.0)
