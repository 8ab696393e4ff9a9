"""SDXL conditioning: caption -> (context [B, 77k, 2048], pooled [B, 1280]) and size/crop time ids.

Context is the penultimate hidden state of TE1 concatenated with that of TE2. Pooled is TE2's final
hidden state at the first EOS token through text_projection. Captions longer than 75 tokens
(max_token_length 150 or 225) are split into 75-token chunks, each encoded as its own
<BOS> ... <EOS> <PAD> sequence of 77; the chunk states are joined as
[BOS of chunk 0] + [75 content states of every chunk] + [last state of the last chunk],
and pooled comes from the first chunk, which is what kohya-trained LoRAs were trained with.
"""
from __future__ import annotations

import torch

from library.models.prompt_weights import apply_token_weights, weighted_token_ids

CHUNK = 75


def chunked_input_ids(tokenizer, captions: list[str], max_token_length: int | None, weighted: bool = False):
    """[B, n_chunks, 77] token ids; n_chunks = max_token_length / 75 (1 when None). With `weighted`,
    (ids, weights [B, 2 + 75n]) where weights follow the joined-state layout of `encode_chunked`."""
    max_tokens = max_token_length or CHUNK
    n_chunks = max_tokens // CHUNK
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    rows, weight_rows = [], []
    for caption in captions:
        if weighted:
            content, token_weights = weighted_token_ids(tokenizer, caption)
        else:
            content = tokenizer(caption, add_special_tokens=False, truncation=False, verbose=False).input_ids
            token_weights = [1.0] * len(content)
        content, token_weights = content[:max_tokens], token_weights[:max_tokens]
        chunks, joined_weights = [], [1.0]
        for index in range(n_chunks):
            part = content[index * CHUNK : (index + 1) * CHUNK]
            part_weights = token_weights[index * CHUNK : (index + 1) * CHUNK]
            chunks.append([bos] + part + [eos] + [pad] * (CHUNK - len(part)))
            joined_weights += part_weights + [1.0] * (CHUNK - len(part))
        rows.append(chunks)
        weight_rows.append(joined_weights + [1.0])
    ids = torch.tensor(rows, dtype=torch.long)
    return (ids, torch.tensor(weight_rows)) if weighted else ids


def _join_chunks(states: torch.Tensor, batch: int, n_chunks: int) -> torch.Tensor:
    """[B*n, 77, D] chunk states -> [B, 2 + 75n, D]."""
    states = states.reshape(batch, n_chunks, states.shape[1], states.shape[2])
    middle = states[:, :, 1 : 1 + CHUNK].reshape(batch, n_chunks * CHUNK, states.shape[-1])
    return torch.cat([states[:, 0, :1], middle, states[:, -1, -1:]], dim=1)


def encode_chunked(text_encoder1, text_encoder2, ids1: torch.Tensor, ids2: torch.Tensor, weights=None):
    """Token ids [B, n, 77] for both encoders -> (context [B, 2+75n, D1+D2], pooled [B, P]).
    `weights` ([B, 2+75n] per encoder) scale the hidden states (emphasis); pooled is not weighted."""
    batch, n_chunks, length = ids1.shape
    out1 = text_encoder1(ids1.reshape(-1, length).to(text_encoder1.device), output_hidden_states=True)
    out2 = text_encoder2(ids2.reshape(-1, length).to(text_encoder2.device), output_hidden_states=True)
    hidden1 = _join_chunks(out1.hidden_states[-2], batch, n_chunks)
    hidden2 = _join_chunks(out2.hidden_states[-2], batch, n_chunks)
    if weights is not None:
        hidden1, hidden2 = apply_token_weights(hidden1, weights[0]), apply_token_weights(hidden2, weights[1])
    pooled = out2.text_embeds.reshape(batch, n_chunks, -1)[:, 0]
    return torch.cat([hidden1, hidden2.to(hidden1.dtype)], dim=-1), pooled


def encode_captions(model_parts, captions: list[str], max_token_length: int | None, weighted: bool = False):
    """Captions -> (context, pooled) using the two tokenizers and text encoders of `model_parts`;
    `weighted` reads A1111 emphasis such as (word:1.2)."""
    tokenizer1, tokenizer2 = model_parts.tokenizers
    if not weighted:
        ids1 = chunked_input_ids(tokenizer1, captions, max_token_length)
        ids2 = chunked_input_ids(tokenizer2, captions, max_token_length)
        return encode_chunked(model_parts.text_encoder1, model_parts.text_encoder2, ids1, ids2)
    ids1, weights1 = chunked_input_ids(tokenizer1, captions, max_token_length, weighted=True)
    ids2, weights2 = chunked_input_ids(tokenizer2, captions, max_token_length, weighted=True)
    return encode_chunked(model_parts.text_encoder1, model_parts.text_encoder2, ids1, ids2, (weights1, weights2))


def time_ids(original_size_hw, crop_top_left, target_size_hw, dtype=torch.float32) -> torch.Tensor:
    """[B, 6] SDXL micro-conditioning: original (h, w), crop (top, left), target (h, w)."""
    rows = [list(o) + list(c) + list(t) for o, c, t in zip(original_size_hw, crop_top_left, target_size_hw)]
    return torch.tensor(rows, dtype=dtype)
