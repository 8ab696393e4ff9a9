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
from types import SimpleNamespace

import numpy as np
import torch

from library.file_io import atomic_path
from library.models.sdxl_conditioning import encode_captions

TE_CACHE_SUFFIX = "_te_outputs.npz"
DEFAULT_BATCH = 16  # captions per text-encoder forward when caching (text_encoder_batch_size overrides)


def te_cache_path(image_path: str | os.PathLike) -> Path:
    image_path = Path(image_path)
    return image_path.with_name(image_path.stem + TE_CACHE_SUFFIX)


@torch.no_grad()
def encode_texts(tokenizers, text_encoders, texts, max_token_length: int | None = None, weighted: bool = False,
                 batch_size: int = DEFAULT_BATCH, progress: bool = True) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """{text: (hidden_state1, hidden_state2, pool2)} for each distinct text, encoded `batch_size` at a
    time (DreamBooth captions repeat: each distinct one is encoded once). Tensors are on the CPU in the
    encoders' dtype (the training dtype, as kohya keeps them); `storage_array` gives the file's arrays."""
    from tqdm import tqdm

    distinct = list(dict.fromkeys(texts))
    parts = SimpleNamespace(tokenizers=tokenizers, text_encoder1=text_encoders[0], text_encoder2=text_encoders[1])
    width1 = text_encoders[0].config.hidden_size
    outputs = {}
    bar = tqdm(total=len(distinct), desc="caching text-encoder outputs", disable=not progress or len(distinct) < 16)
    for start in range(0, len(distinct), max(1, batch_size)):
        batch = distinct[start : start + max(1, batch_size)]
        context, pooled = encode_captions(parts, batch, max_token_length, weighted)
        context, pooled = context.cpu(), pooled.cpu()
        for row, text in enumerate(batch):
            outputs[text] = (context[row, :, :width1].clone(), context[row, :, width1:].clone(), pooled[row].clone())
        bar.update(len(batch))
    bar.close()
    return outputs


def storage_array(tensor: torch.Tensor) -> np.ndarray:
    """A cached output as the npz file holds it: fp16 stays fp16, bf16 becomes float32 (numpy has no
    bf16; kohya does the same), float32 stays."""
    return tensor.detach().cpu().to(torch.float16 if tensor.dtype == torch.float16 else torch.float32).numpy()


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
