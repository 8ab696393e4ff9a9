"""Pivotal-tuning / textual-inversion embeddings (`<name>_emb.safetensors`) as new prompt tokens.

A file holds `clip_l` [N, 768] and `clip_g` [N, 1280] rows (DESIGN.md 4.2). As in A1111, the
word that calls it is the file stem: every whole-word occurrence of the stem in a prompt becomes
the N new tokens `<stem_0> ... <stem_N-1>`, added to both tokenizers with their rows written into
both text encoders' token-embedding tables.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from library.errors import UserError


def _read(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    from safetensors import safe_open

    if not path.is_file():
        raise UserError(f"{path}: embedding file not found")
    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = set(handle.keys())
            if not {"clip_l", "clip_g"} <= keys:
                raise UserError(f"{path}: not an SDXL embedding file (needs clip_l and clip_g tensors, has "
                                f"{', '.join(sorted(keys)[:5])})")
            return handle.get_tensor("clip_l"), handle.get_tensor("clip_g")
    except UserError:
        raise
    except Exception as error:
        raise UserError(f"{path}: not a readable safetensors file ({error})") from None


class Embeddings:
    def __init__(self):
        self.words: dict[str, list[str]] = {}

    @torch.no_grad()
    def load(self, model, path) -> str:
        """Add one file's tokens to the model; returns the word that calls it."""
        path = Path(path)
        clip_l, clip_g = _read(path)
        word = path.stem
        if clip_l.shape[0] != clip_g.shape[0] or clip_l.dim() != 2:
            raise UserError(f"{path}: clip_l {tuple(clip_l.shape)} and clip_g {tuple(clip_g.shape)} must be [N, width] "
                            "with the same N")
        tokens = [f"<{word}_{i}>" for i in range(clip_l.shape[0])]
        for tokenizer, encoder, rows, key in ((model.tokenizer1, model.text_encoder1, clip_l, "clip_l"),
                                              (model.tokenizer2, model.text_encoder2, clip_g, "clip_g")):
            table = encoder.get_input_embeddings()
            if rows.shape[1] != table.weight.shape[1]:
                raise UserError(f"{path}: {key} rows have width {rows.shape[1]}, the text encoder "
                                f"{table.weight.shape[1]} (an embedding for another model?)")
            if any(t in tokenizer.get_vocab() for t in tokens):
                raise UserError(f"{path}: an embedding called '{word}' is already loaded")
            tokenizer.add_tokens(tokens)
            encoder.resize_token_embeddings(len(tokenizer))
            table = encoder.get_input_embeddings()
            ids = tokenizer.convert_tokens_to_ids(tokens)
            table.weight[ids] = rows.to(table.weight.dtype)
        self.words[word] = tokens
        return word

    def expand(self, prompt: str) -> str:
        """Replace each embedding word by its tokens."""
        for word, tokens in self.words.items():
            prompt = re.sub(rf"(?<![\w<]){re.escape(word)}(?![\w>])", " ".join(tokens), prompt)
        return prompt
