"""Text conditioning cache for training: captions encoded once, in memory or in
`<stem>_te_outputs.npz` (the format of library/data/caching/text_encoder_cache.py, shared with
tools/cache_text_encoder_outputs.py, so either may create the files the other reuses).

Used only when captions cannot change per step (the config check forbids shuffling and dropout with
`cache_text_encoder_outputs`); a changed caption or text encoder re-encodes that sample.

Encoding is batched (text_encoder_batch_size, default 16), each distinct caption once, and with
several processes split between them like the latent cache: each encodes its share, then the
outputs travel (through the npz files after a barrier, or gathered in memory). Outputs are kept in
the text encoders' dtype (kohya keeps them in the training dtype too).
"""
from __future__ import annotations

import random
import zlib

import torch

from library.data.caching.text_encoder_cache import (
    DEFAULT_BATCH,
    encode_texts,
    load_te_cache,
    save_te_cache,
    storage_array,
    te_cache_is_fresh,
    te_cache_path,
    text_encoder_fingerprint,
)
from library.data.caption_processing import process_caption


def cached_captions(items) -> list[str]:
    """The text each item is encoded with when text-encoder outputs are cached: its caption after
    the fixed processing (prefix/suffix, secondary_separator; no option that changes per step is
    allowed then). tools/cache_text_encoder_outputs.py encodes exactly these texts."""
    return [process_caption(item.caption, item.subset, random.Random(0)) for item in items]


class TextEncoderCache:
    """(context, pooled) per training item, computed once."""

    def __init__(self, model, items, args):
        self.model, self.items, self.args = model, items, args
        self.dtype = next(model.text_encoders[0].parameters()).dtype
        self._entries: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def prepare(self, captions: list[str], accelerator=None) -> int:
        """Fill the cache; returns how many distinct captions this process encoded (the rest came
        from fresh files or from other processes)."""
        args = self.args
        to_disk = args.cache_text_encoder_outputs_to_disk
        fingerprint = text_encoder_fingerprint(self.model.text_encoders, args.max_token_length, args.weighted_captions)
        pending = []
        for index, caption in enumerate(captions):
            path = te_cache_path(self.items[index].image_path)
            if to_disk and path.exists() and te_cache_is_fresh(path, caption, fingerprint):
                self._store(index, *(torch.from_numpy(array) for array in load_te_cache(path)))
            else:
                pending.append(index)
        world = accelerator.num_processes if accelerator is not None else 1
        if world > 1:
            from library.training.parallel.distributed import union_over_processes

            pending = union_over_processes(accelerator, pending)  # every process takes the same branches below
        rank = accelerator.process_index if world > 1 else 0
        # a caption's owner is decided by its text, so the processes split distinct captions, not images
        owned = [i for i in pending if _owner(captions[i], world) == rank]
        outputs = encode_texts(self.model.tokenizers, self.model.text_encoders, [captions[i] for i in owned],
                               args.max_token_length, args.weighted_captions, args.text_encoder_batch_size or DEFAULT_BATCH)
        for index in owned:
            hidden1, hidden2, pool2 = outputs[captions[index]]
            self._store(index, hidden1, hidden2, pool2)
            if to_disk:
                save_te_cache(te_cache_path(self.items[index].image_path), storage_array(hidden1), storage_array(hidden2),
                              storage_array(pool2), captions[index], fingerprint)
        if world > 1 and pending:
            self._receive(accelerator, owned, [i for i in pending if i not in self._entries], to_disk)
        return len(outputs)

    def _receive(self, accelerator, owned: list[int], missing: list[int], to_disk: bool) -> None:
        """The other processes' shares: from their files after a barrier, or gathered in memory."""
        if to_disk:
            accelerator.wait_for_everyone()
            for index in missing:
                self._store(index, *(torch.from_numpy(a) for a in load_te_cache(te_cache_path(self.items[index].image_path))))
            return
        from accelerate.utils import gather_object

        own = {index: self._entries[index] for index in owned}
        for shared in gather_object([own]):
            for index, entry in shared.items():
                self._entries.setdefault(index, entry)

    def _store(self, index: int, hidden1: torch.Tensor, hidden2: torch.Tensor, pool2: torch.Tensor) -> None:
        context = torch.cat([hidden1.to(self.dtype), hidden2.to(self.dtype)], dim=-1)
        self._entries[index] = (context, pool2.to(self.dtype))

    def get(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        contexts, pooled = zip(*(self._entries[i] for i in indices))
        return torch.stack(contexts), torch.stack(pooled)


def _owner(caption: str, world: int) -> int:
    """Which process encodes `caption` (the same answer on every process)."""
    return zlib.crc32(caption.encode("utf-8")) % world
