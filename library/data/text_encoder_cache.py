"""SDXL text-encoder outputs for a caption, and their cache file `<stem>_te_outputs.npz`.

Conditioning (DESIGN.md 4.5): penultimate hidden states of TE1 and TE2 (no final layer norm),
and TE2's pooled output (final hidden state at EOS through text_projection, `text_embeds`).
Long captions (max_token_length 150/225) are split into 75-token chunks, each encoded as its
own "<BOS> ... <EOS> <pad>" sequence of 77; the chunks' hidden states are concatenated
([77 k, width]) and the pooled output comes from the first chunk.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from library.file_io import atomic_path

CHUNK = 75
TE_CACHE_SUFFIX = "_te_outputs.npz"


def te_cache_path(image_path: str | os.PathLike) -> Path:
    image_path = Path(image_path)
    return image_path.with_name(image_path.stem + TE_CACHE_SUFFIX)


def chunk_token_ids(tokenizer, text: str, max_token_length: int | None) -> torch.Tensor:
    """[k, 77] ids: k = max_token_length // 75 (1 when None)."""
    chunks = (max_token_length or CHUNK) // CHUNK
    ids = tokenizer(text, truncation=True, max_length=chunks * CHUNK + 2, padding="max_length", return_tensors="pt").input_ids[0]
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    rows = []
    for start in range(1, chunks * CHUNK + 1, CHUNK):
        row = torch.cat([torch.tensor([bos]), ids[start : start + CHUNK], torch.tensor([pad])])
        # A chunk cut inside the text ends with EOS; an empty chunk reads "<BOS> <EOS> <pad> ...".
        if int(row[-2]) not in (eos, pad):
            row[-1] = eos
        if int(row[1]) == pad:
            row[1] = eos
        rows.append(row)
    return torch.stack(rows)


@torch.no_grad()
def encode_caption(tokenizers, text_encoders, text: str, max_token_length: int | None = None):
    """(hidden_state1 [77k, w1], hidden_state2 [77k, w2], pool2 [w2]) as float32 numpy arrays."""
    ids1 = chunk_token_ids(tokenizers[0], text, max_token_length)
    ids2 = chunk_token_ids(tokenizers[1], text, max_token_length)
    te1, te2 = text_encoders
    out1 = te1(ids1.to(te1.device), output_hidden_states=True)
    out2 = te2(ids2.to(te2.device), output_hidden_states=True)
    hidden1 = out1.hidden_states[-2].reshape(-1, out1.hidden_states[-2].shape[-1])
    hidden2 = out2.hidden_states[-2].reshape(-1, out2.hidden_states[-2].shape[-1])
    pool2 = out2.text_embeds[0]
    return tuple(t.float().cpu().numpy() for t in (hidden1, hidden2, pool2))


def text_encoder_fingerprint(text_encoders, max_token_length: int | None) -> str:
    digest = hashlib.sha256(f"max_token_length={max_token_length};".encode())
    for encoder in text_encoders:
        for name, tensor in sorted(encoder.state_dict().items()):
            digest.update(name.encode())
            data = tensor.detach().to("cpu", torch.float32).contiguous()
            digest.update(memoryview(data.numpy()).cast("B"))
    return digest.hexdigest()[:32]


def caption_sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def save_te_cache(path, hidden1, hidden2, pool2, caption: str, te_fp: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, hidden_state1=hidden1, hidden_state2=hidden2, pool2=pool2,
                     caption_sha256=np.array(caption_sha(caption)), te_fingerprint=np.array(te_fp))


def load_te_cache(path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return npz["hidden_state1"], npz["hidden_state2"], npz["pool2"]


def te_cache_is_fresh(path, caption: str, te_fp: str) -> bool:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return str(npz["caption_sha256"]) == caption_sha(caption) and str(npz["te_fingerprint"]) == te_fp
    except (OSError, ValueError, KeyError, EOFError):
        return False
