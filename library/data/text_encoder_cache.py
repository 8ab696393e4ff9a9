"""SDXL text-encoder outputs for a caption, and their cache file `<stem>_te_outputs.npz`.

Conditioning (DESIGN.md 4.5): penultimate hidden states of TE1 and TE2 (no final layer norm),
and TE2's pooled output (final hidden state at EOS through text_projection, `text_embeds`).
Long captions (max_token_length 150/225) are encoded in 75-token chunks as the trainer does
(library/models/sdxl_conditioning.py): [2 + 75k, width] states, pooled from the first chunk.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from library.file_io import atomic_path
from library.models.sdxl_conditioning import chunked_input_ids, encode_chunked

TE_CACHE_SUFFIX = "_te_outputs.npz"


def te_cache_path(image_path: str | os.PathLike) -> Path:
    image_path = Path(image_path)
    return image_path.with_name(image_path.stem + TE_CACHE_SUFFIX)


@torch.no_grad()
def encode_caption(tokenizers, text_encoders, text: str, max_token_length: int | None = None, weighted: bool = False):
    """(hidden_state1 [2+75k, w1], hidden_state2 [2+75k, w2], pool2 [w2]) as float32 numpy arrays.

    The same conditioning the trainer computes (library/models/sdxl_conditioning.py); for the
    default 75 tokens that is [77, width], for max_token_length 225 kohya's [227, width].
    """
    if weighted:
        ids1, weights1 = chunked_input_ids(tokenizers[0], [text], max_token_length, weighted=True)
        ids2, weights2 = chunked_input_ids(tokenizers[1], [text], max_token_length, weighted=True)
        context, pooled = encode_chunked(text_encoders[0], text_encoders[1], ids1, ids2, (weights1, weights2))
    else:
        ids1 = chunked_input_ids(tokenizers[0], [text], max_token_length)
        ids2 = chunked_input_ids(tokenizers[1], [text], max_token_length)
        context, pooled = encode_chunked(text_encoders[0], text_encoders[1], ids1, ids2)
    width1 = text_encoders[0].config.hidden_size
    hidden1, hidden2 = context[0, :, :width1], context[0, :, width1:]
    return tuple(t.float().cpu().numpy() for t in (hidden1, hidden2, pooled[0]))


def text_encoder_fingerprint(text_encoders, max_token_length: int | None, weighted: bool = False) -> str:
    digest = hashlib.sha256(f"max_token_length={max_token_length};".encode() + (b"weighted;" if weighted else b""))
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
