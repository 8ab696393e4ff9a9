"""Pretraining the toy world's UNet on cached latents: plain epsilon-prediction diffusion training.

The pieces are the product's: the UNet is the tiny SDXL UNet (diffusers), captions are encoded by
`library.models.sdxl_conditioning.encode_captions` (context, pooled), time ids by `time_ids`, and
the noise schedule is `library.training.noise.make_noise_scheduler` (SDXL's DDPM). Only the loop is
here, because the product trains networks (LoRAs), not whole UNets.

Speed: with 77-token contexts the cross-attention key/value projections dominate a step of this
tiny UNet at 8x8 latents. A batch is therefore built from a few captions with several images each,
and `SharedContextAttention` projects each caption's context once and lets all images of that
caption attend to it (cross-attention has no interaction between queries, so the result is exactly
that of the per-image computation). Captions are dropped to "" in a share of the groups, so the
model also learns the unconditional prediction classifier-free guidance needs.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm import tqdm

from library.models.sdxl_conditioning import encode_captions, time_ids
from library.training.noise import SDXL_NUM_TIMESTEPS, make_noise_scheduler


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


def train_unet(unet, latents: torch.Tensor, caption_ids: torch.Tensor, contexts, pooled, size: int, steps: int,
               seed: int, groups: int = 4, per_group: int = 8, learning_rate: float = 1e-3, empty_index: int | None = None,
               dropout: float = 0.1, progress: bool = True) -> list[float]:
    """Train `unet` in place. `latents` [N, 4, h, w] are scaled (x VAE scale factor); image i has
    caption `caption_ids[i]` in the `contexts`/`pooled` table; `empty_index` is the table row of ""."""
    generator = torch.Generator().manual_seed(seed)
    scheduler = make_noise_scheduler()
    by_caption = {int(c): torch.nonzero(caption_ids == c).flatten() for c in caption_ids.unique()}
    caption_keys = torch.tensor(sorted(by_caption))
    ids = time_ids([(size, size)], [(0, 0)], [(size, size)]).expand(groups * per_group, -1)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=learning_rate, weight_decay=0.0, foreach=True)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))))
    processors = unet.attn_processors
    unet.set_attn_processor(SharedContextAttention())
    unet.train()
    losses = []
    try:
        for _ in tqdm(range(steps), desc="UNet", disable=not progress, mininterval=2):
            chosen = caption_keys[torch.randperm(len(caption_keys), generator=generator)[:groups]]
            images, rows = [], []
            for caption in chosen.tolist():
                pool = by_caption[caption]
                images.append(pool[torch.randint(len(pool), (per_group,), generator=generator)])
                drop = empty_index is not None and torch.rand((), generator=generator).item() < dropout
                rows.append(empty_index if drop else caption)
            x0 = latents[torch.cat(images)]
            rows = torch.tensor(rows)
            noise = torch.randn(x0.shape, generator=generator)
            t = torch.randint(0, SDXL_NUM_TIMESTEPS, (x0.shape[0],), generator=generator)
            noisy = scheduler.add_noise(x0, noise, t)
            text_embeds = pooled[rows].repeat_interleave(per_group, 0)
            prediction = unet(noisy, t, contexts[rows], added_cond_kwargs={"text_embeds": text_embeds, "time_ids": ids}).sample
            loss = F.mse_loss(prediction, noise)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0, foreach=True)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
    finally:
        unet.set_attn_processor(processors)
        unet.eval()
    return losses
