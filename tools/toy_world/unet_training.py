"""Pretraining the toy world's UNet on cached latents: plain epsilon-prediction diffusion training.

The pieces are the product's: the UNet is a diffusers SDXL UNet (tools/toy_world/model.py), captions are encoded by
`library.models.sdxl_conditioning.encode_captions` (context, pooled), time ids by `time_ids`, and
the noise schedule is `library.training.objective.noise.make_noise_scheduler` (SDXL's DDPM). Only the loop is
here, because the product trains networks (LoRAs), not whole UNets.

What makes it fast enough for a CPU:
- With 77-token contexts the cross-attention key/value projections dominate a step of this tiny
  UNet at 8x8 latents. A batch is built from a few captions with several images each, and
  `SharedContextAttention` projects each caption's context once and lets all images of that caption
  attend to it (cross-attention has no interaction between queries, so the result is exactly that
  of the per-image computation).
- AdamW with `fused=True` (one kernel per tensor on the CPU: 3x faster than `foreach` here).
- The target is the exact posterior-mean noise over the world's images (`ideal_noise`), not the
  drawn noise: the same optimum with far less variance.
- What the caption decides (the colour) is decided at high noise, so timesteps are drawn with
  density growing towards t = 1000 (`high_noise_bias`), and the layers that read the caption
  (cross-attention keys/values, the pooled-text embedding) learn 10x faster than the rest.
- min-SNR-5 loss weighting, and an exponential moving average of the weights, which is what is saved.
Captions are dropped to "" in a share of the groups, so the model also learns the unconditional
prediction that classifier-free guidance needs.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from library.models.sdxl_conditioning import encode_captions, time_ids
from library.training.objective.noise import SDXL_NUM_TIMESTEPS, make_noise_scheduler, snr


@dataclass(frozen=True)
class UNetTraining:
    steps: int = 200
    groups: int = 4  # captions per batch
    per_group: int = 8  # images per caption
    learning_rate: float = 1e-3
    conditioning_lr_scale: float = 10.0  # learning-rate factor of the layers that read the caption
    high_noise_bias: float = 3.0  # t = 1000 * u ** (1 / bias), u uniform: density grows as t^(bias - 1)
    caption_dropout: float = 0.1
    min_snr_gamma: float = 5.0
    ema_decay: float = 0.95
    seed: int = 0


class SharedContextAttention:
    """Attention processor: when the context batch U is smaller than the image batch B (B = U x G,
    images grouped by caption), each context serves G consecutive images."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        batch, tokens, _ = hidden_states.shape
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        groups = context.shape[0]
        query = attn.to_q(hidden_states)
        if groups != batch:  # [B, L, C] -> [U, G*L, C]: every image of a group sees the same keys
            query = query.reshape(groups, (batch // groups) * tokens, -1)
        key, value = attn.to_k(context), attn.to_v(context)
        heads = attn.heads
        split = lambda t: t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)  # noqa: E731
        out = F.scaled_dot_product_attention(split(query), split(key), split(value))
        out = out.transpose(1, 2).reshape(batch, tokens, -1)
        return attn.to_out[1](attn.to_out[0](out))


def caption_table(model, captions: list[str]):
    """(context [N, 77, D], pooled [N, P]) of every caption, from the frozen text encoders."""
    with torch.no_grad():
        return encode_captions(model, captions, None)


def ideal_noise(noisy, latents, alpha_bar):
    """E[noise | noisy image] when the clean image is one of `latents` [n, ...] (equally likely): the
    minimiser of the denoising loss on this data. Used as the target it has the same optimum as the
    drawn noise with far less variance (a "stable target field"), so the small UNet learns in fewer
    steps. `noisy` [g, ...] share one caption; `alpha_bar` [g] is each one's cumulative alpha."""
    scale = alpha_bar.sqrt().view(-1, 1)
    variance = (1 - alpha_bar).view(-1, 1)
    flat, data = noisy.flatten(1), latents.flatten(1)
    squared = flat.pow(2).sum(1, keepdim=True) - 2 * scale * flat @ data.T + scale**2 * data.pow(2).sum(1)
    weights = torch.softmax(-squared / (2 * variance), dim=1)
    clean = weights @ data
    return ((flat - scale * clean) / variance.sqrt()).view_as(noisy)


def _reads_caption(name: str) -> bool:
    return "attn2.to_k" in name or "attn2.to_v" in name or name.startswith("add_embedding")


def _lr_factor(step: int, total: int) -> float:
    """Linear warm-up over 5% of the steps, then cosine decay to 10%."""
    warmup = max(1, total // 20)
    return min(1.0, (step + 1) / warmup) * (0.1 + 0.45 * (1 + math.cos(math.pi * min(step, total) / total)))


def train_unet(unet, latents: torch.Tensor, caption_ids: torch.Tensor, contexts, pooled, size: int, config: UNetTraining,
               empty_index: int, progress: bool = True, callback=None, callback_every: int = 100):
    """Train `unet`; returns (EMA copy of the UNet, losses). `latents` [N, 4, h, w] are scaled (x the
    VAE scale factor); image i has caption `caption_ids[i]` in the `contexts`/`pooled` table, whose
    row `empty_index` is "". `callback(step, ema_unet)` runs every `callback_every` steps when given."""
    generator = torch.Generator().manual_seed(config.seed)
    scheduler = make_noise_scheduler()
    by_caption = {int(c): torch.nonzero(caption_ids == c).flatten() for c in caption_ids.unique()}
    pools = {**by_caption, empty_index: torch.arange(len(latents))}  # "" stands for every image
    caption_keys = torch.tensor(sorted(by_caption))
    batch = config.groups * config.per_group
    ids = time_ids([(size, size)], [(0, 0)], [(size, size)]).expand(batch, -1)
    parameters = list(unet.parameters())
    named = list(unet.named_parameters())
    groups = [{"params": [p for n, p in named if not _reads_caption(n)]},
              {"params": [p for n, p in named if _reads_caption(n)], "lr": config.learning_rate * config.conditioning_lr_scale}]
    optimizer = torch.optim.AdamW(groups, lr=config.learning_rate, weight_decay=0.0, fused=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, config.steps))
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    ema_parameters = list(ema.parameters())
    processors = unet.attn_processors
    unet.set_attn_processor(SharedContextAttention())
    unet.train()
    losses = []
    try:
        for step in tqdm(range(config.steps), desc="UNet", disable=not progress, mininterval=2):
            chosen = caption_keys[torch.randperm(len(caption_keys), generator=generator)[: config.groups]]
            images, rows = [], []
            for caption in chosen.tolist():
                pool = by_caption[caption]
                images.append(pool[torch.randint(len(pool), (config.per_group,), generator=generator)])
                dropped = torch.rand((), generator=generator).item() < config.caption_dropout
                rows.append(empty_index if dropped else caption)
            x0 = latents[torch.cat(images)]
            rows = torch.tensor(rows)
            noise = torch.randn(x0.shape, generator=generator)
            u = torch.rand(batch, generator=generator) ** (1 / config.high_noise_bias)
            t = (u * SDXL_NUM_TIMESTEPS).long().clamp(max=SDXL_NUM_TIMESTEPS - 1)
            noisy = scheduler.add_noise(x0, noise, t)
            noise = torch.cat([ideal_noise(part, latents[pools[row]], scheduler.alphas_cumprod[steps_])
                               for part, row, steps_ in zip(noisy.split(config.per_group), rows.tolist(),
                                                            t.split(config.per_group))])
            text_embeds = pooled[rows].repeat_interleave(config.per_group, 0)
            prediction = unet(noisy, t, contexts[rows], added_cond_kwargs={"text_embeds": text_embeds, "time_ids": ids}).sample
            per_sample = (prediction - noise).pow(2).mean(dim=(1, 2, 3))
            if config.min_snr_gamma:
                ratio = snr(scheduler, t)
                per_sample = per_sample * torch.clamp(ratio, max=config.min_snr_gamma) / ratio
            loss = per_sample.mean()
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():  # the average starts short and lengthens to 1 / (1 - decay) steps
                decay = min(config.ema_decay, (1 + step) / (10 + step))
                torch._foreach_lerp_(ema_parameters, parameters, 1 - decay)
            losses.append(loss.item())
            if callback is not None and (step + 1) % callback_every == 0:
                callback(step + 1, ema)
    finally:
        unet.set_attn_processor(processors)
        unet.eval()
    return ema, losses
