"""Text conditioning cache for training: captions encoded once, in memory or in
`<stem>_te_outputs.npz` (the format of library/data/text_encoder_cache.py, shared with
tools/cache_text_encoder_outputs.py, so either may create the files the other reuses).

Used only when captions cannot change per step (the config check forbids shuffling and dropout with
`cache_text_encoder_outputs`); a changed caption or text encoder re-encodes that sample.
"""
from __future__ import annotations

import random

import numpy as np
import torch
from tqdm import tqdm

from library.data.text_encoder_cache import (
    encode_caption,
    load_te_cache,
    save_te_cache,
    te_cache_is_fresh,
    te_cache_path,
    text_encoder_fingerprint,
)
from library.training.caption_processing import process_caption


def cached_captions(items) -> list[str]:
    """The text each item is encoded with when text-encoder outputs are cached: its caption after
    the fixed processing (prefix/suffix, secondary_separator; no option that changes per step is
    allowed then). tools/cache_text_encoder_outputs.py encodes exactly these texts."""
    return [process_caption(item.caption, item.subset, random.Random(0)) for item in items]


class TextEncoderCache:
    """(context, pooled) per training item, computed once."""

    def __init__(self, model, items, args):
        self.model, self.items, self.args = model, items, args
        self._entries: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def prepare(self, captions: list[str], write: bool = True) -> int:
        """Fill the cache; returns how many captions were encoded (the rest came from fresh files).
        Only the process with `write` writes files (every process computes what it needs)."""
        to_disk = self.args.cache_text_encoder_outputs_to_disk
        weighted = self.args.weighted_captions
        fingerprint = text_encoder_fingerprint(self.model.text_encoders, self.args.max_token_length, weighted)
        encoded = 0
        for index, caption in enumerate(tqdm(captions, desc="caching text-encoder outputs", disable=len(captions) < 16)):
            path = te_cache_path(self.items[index].image_path)
            if to_disk and path.exists() and te_cache_is_fresh(path, caption, fingerprint):
                hidden1, hidden2, pool2 = load_te_cache(path)
            else:
                hidden1, hidden2, pool2 = encode_caption(self.model.tokenizers, self.model.text_encoders, caption,
                                                         self.args.max_token_length, weighted)
                encoded += 1
                if to_disk and write:
                    save_te_cache(path, hidden1, hidden2, pool2, caption, fingerprint)
            context = np.concatenate([hidden1, hidden2], axis=-1)
            self._entries[index] = (torch.from_numpy(context), torch.from_numpy(np.asarray(pool2)))
        return encoded

    def get(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        contexts, pooled = zip(*(self._entries[i] for i in indices))
        return torch.stack(contexts), torch.stack(pooled)
