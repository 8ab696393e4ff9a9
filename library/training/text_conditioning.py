"""Text conditioning per batch: encode processed captions, or read them from a per-sample cache.

With `cache_text_encoder_outputs` the captions are encoded once (they cannot change per step: the
config check forbids shuffling/dropout then) and kept in memory, or in `<stem>_te_outputs.npz`
(`hidden_state1` [77k, D1], `hidden_state2` [77k, D2], `pool2` [P], plus a fingerprint of the caption,
the encoders and max_token_length so a changed caption is re-encoded).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from library.file_io import atomic_path
from library.training.sdxl_conditioning import encode_captions

TE_CACHE_SUFFIX = "_te_outputs.npz"


def te_cache_path(image_path: Path) -> Path:
    return image_path.with_name(image_path.stem + TE_CACHE_SUFFIX)


def encoders_fingerprint(model) -> str:
    digest = hashlib.sha256()
    for encoder in model.text_encoders:
        for name, tensor in sorted(encoder.state_dict().items()):
            digest.update(name.encode())
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:32]


def _caption_key(caption: str, encoders_fp: str, max_token_length) -> str:
    return hashlib.sha256(f"{encoders_fp}|{max_token_length}|{caption}".encode()).hexdigest()[:32]


class TextEncoderCache:
    """(context, pooled) per training item, computed once."""

    def __init__(self, model, items, args):
        self.model, self.items, self.args = model, items, args
        self._entries: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    @torch.no_grad()
    def prepare(self, captions: list[str]) -> int:
        """Fill the cache; returns how many captions were encoded (the rest came from disk)."""
        fingerprint = encoders_fingerprint(self.model)
        d1 = self.model.text_encoder1.config.hidden_size
        todo = []
        for index, caption in enumerate(captions):
            key = _caption_key(caption, fingerprint, self.args.max_token_length)
            path = te_cache_path(self.items[index].image_path)
            if self.args.cache_text_encoder_outputs_to_disk and path.exists():
                with np.load(path, allow_pickle=False) as npz:
                    if "key" in npz.files and str(npz["key"]) == key:
                        context = np.concatenate([npz["hidden_state1"], npz["hidden_state2"]], axis=-1)
                        self._entries[index] = (torch.from_numpy(context), torch.from_numpy(npz["pool2"]))
                        continue
            todo.append((index, caption, key, path))
        for start in tqdm(range(0, len(todo), 8), desc="caching text-encoder outputs", disable=len(todo) < 16):
            chunk = todo[start : start + 8]
            context, pooled = encode_captions(self.model, [c for _, c, _, _ in chunk], self.args.max_token_length)
            for row, (index, _, key, path) in enumerate(chunk):
                entry = (context[row].float().cpu(), pooled[row].float().cpu())
                self._entries[index] = entry
                if self.args.cache_text_encoder_outputs_to_disk:
                    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
                        np.savez(handle, hidden_state1=entry[0][:, :d1].numpy(), hidden_state2=entry[0][:, d1:].numpy(),
                                 pool2=entry[1].numpy(), key=np.array(key))
        return len(todo)

    def get(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        contexts, pooled = zip(*(self._entries[i] for i in indices))
        return torch.stack(contexts), torch.stack(pooled)
