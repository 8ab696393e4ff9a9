"""Training loss: element-wise loss types, masks, and per-timestep weightings.

`per_sample_loss` returns one value per image so that prior-loss weights (regularisation images),
min-SNR and friends apply per sample before the batch mean.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

from library.training.objective.noise import SDXL_NUM_TIMESTEPS, snr

_SNR_CAP = 1000.0  # snr at t=0 is huge; weights that divide by it are capped as kohya does


@dataclass(frozen=True)
class LossOptions:
    """The options that choose the loss and its per-timestep weights (kohya's names and defaults)."""

    loss_type: str = "l2"
    huber_schedule: str = "snr"
    huber_c: float = 0.1
    huber_scale: float = 1.0
    min_snr_gamma: float | None = None
    v_parameterization: bool = False
    scale_v_pred_loss_like_noise_pred: bool = False
    v_pred_like_loss: float | None = None
    debiased_estimation_loss: bool = False

    @classmethod
    def from_args(cls, args) -> "LossOptions":
        return cls(**{field.name: getattr(args, field.name) for field in fields(cls)})


def huber_c(options: "LossOptions", noise_scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """Per-sample huber threshold for loss_type huber/smooth_l1 under huber_schedule.

    As kohya: huber_scale multiplies the constant and exponential schedules only; the snr schedule
    runs from 1 (clean) down to huber_c (pure noise) and ignores huber_scale.
    """
    if options.huber_schedule == "constant":
        return torch.full(timesteps.shape, float(options.huber_c) * options.huber_scale)
    if options.huber_schedule == "exponential":
        alpha = -math.log(options.huber_c) / SDXL_NUM_TIMESTEPS
        return torch.exp(-alpha * timesteps.float()) * options.huber_scale
    alphas_cumprod = noise_scheduler.alphas_cumprod[timesteps]
    sigmas = ((1.0 - alphas_cumprod) / alphas_cumprod) ** 0.5
    return (1.0 - options.huber_c) / (1.0 + sigmas) ** 2 + options.huber_c


def elementwise_loss(prediction, target, loss_type: str, c: torch.Tensor | None = None) -> torch.Tensor:
    prediction, target = prediction.float(), target.float()
    if loss_type == "l2":
        return (prediction - target) ** 2
    if loss_type == "l1":
        return (prediction - target).abs()
    c = c.to(prediction.device).view(-1, *([1] * (prediction.ndim - 1)))
    smooth = torch.sqrt((prediction - target) ** 2 + c**2) - c
    if loss_type == "huber":
        return 2 * c * smooth
    if loss_type == "smooth_l1":
        return 2 * smooth
    raise ValueError(f"unknown loss_type {loss_type!r}")


def reduce_per_sample(loss: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over all but the batch dimension. With a mask [B,1,h,w] (0..1) it is kohya's masked
    loss: the mean of loss * mask over all pixels, not divided by the mask's area (so a mask
    covering a third of the image gives a third of the gradient, as in kohya)."""
    if mask is not None:
        loss = loss * mask.to(loss.dtype)
    return loss.mean(dim=list(range(1, loss.ndim)))


def min_snr_weight(snr_t: torch.Tensor, gamma: float, v_prediction: bool) -> torch.Tensor:
    clipped = torch.minimum(snr_t, torch.full_like(snr_t, gamma))
    return clipped / (snr_t + 1) if v_prediction else clipped / snr_t


def timestep_weights(options: "LossOptions", noise_scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """Product of the enabled per-timestep loss weights (1 where none is enabled)."""
    snr_t = snr(noise_scheduler, timesteps).float()
    weight = torch.ones_like(snr_t)
    if options.min_snr_gamma:
        weight = weight * min_snr_weight(snr_t, options.min_snr_gamma, options.v_parameterization)
    capped = torch.clamp(snr_t, max=_SNR_CAP)
    if options.scale_v_pred_loss_like_noise_pred:
        weight = weight * capped / (capped + 1)
    if options.v_pred_like_loss:
        weight = weight * (1 + options.v_pred_like_loss * (capped + 1) / capped)
    if options.debiased_estimation_loss:
        weight = weight * (1 / (capped + 1) if options.v_parameterization else 1 / torch.sqrt(capped))
    return weight


def training_loss(options: "LossOptions", noise_scheduler, prediction, target, timesteps, sample_weights, mask=None) -> torch.Tensor:
    """Scalar loss of one batch: element loss -> per-sample mean -> timestep and sample weights -> mean."""
    c = huber_c(options, noise_scheduler, timesteps) if options.loss_type in ("huber", "smooth_l1") else None
    per_sample = reduce_per_sample(elementwise_loss(prediction, target, options.loss_type, c), mask)
    per_sample = per_sample * timestep_weights(options, noise_scheduler, timesteps.cpu()).to(per_sample.device)
    return (per_sample * sample_weights.to(per_sample.device)).mean()
