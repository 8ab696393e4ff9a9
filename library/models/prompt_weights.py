"""A1111-style emphasis in captions and prompts: `(word)` x1.1, `[word]` / 1.1, `(word:1.3)`,
nesting multiplies, `\\(` is a literal parenthesis. Used for `weighted_captions` and sample prompts.

`parse_weighted(text)` -> [(text piece, weight)]; `weighted_token_ids` tokenizes piece by piece so
each token carries its piece's weight; `apply_token_weights` scales hidden states by those weights
and restores each sample's mean, as the long-prompt-weighting pipelines do.
"""
from __future__ import annotations

import re

import torch

_TOKENS = re.compile(r"\\[()\[\]\\]|\(|\[|:\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*\)|\)|\]|[^\\()\[\]:]+|:|\\")
UP, DOWN = 1.1, 1 / 1.1


def parse_weighted(text: str) -> list[tuple[str, float]]:
    pieces: list[list] = []
    round_open, square_open = [], []

    def scale(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            piece[1] *= factor

    for match in _TOKENS.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\") and len(token) == 2:
            pieces.append([token[1], 1.0])
        elif token == "(":
            round_open.append(len(pieces))
        elif token == "[":
            square_open.append(len(pieces))
        elif weight is not None and round_open:
            scale(round_open.pop(), float(weight))
        elif token == ")" and round_open:
            scale(round_open.pop(), UP)
        elif token == "]" and square_open:
            scale(square_open.pop(), DOWN)
        else:
            pieces.append([token, 1.0])
    for start in round_open:  # unclosed brackets still emphasise, as in A1111
        scale(start, UP)
    for start in square_open:
        scale(start, DOWN)
    merged: list[list] = []
    for piece, weight in pieces:
        if merged and merged[-1][1] == weight:
            merged[-1][0] += piece
        else:
            merged.append([piece, weight])
    return [(piece, weight) for piece, weight in merged if piece] or [("", 1.0)]


def weighted_token_ids(tokenizer, text: str) -> tuple[list[int], list[float]]:
    ids, weights = [], []
    for piece, weight in parse_weighted(text):
        piece_ids = tokenizer(piece, add_special_tokens=False, truncation=False, verbose=False).input_ids
        ids += piece_ids
        weights += [weight] * len(piece_ids)
    return ids, weights


def apply_token_weights(hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """hidden [B, L, D] x weights [B, L], then rescaled so each sample keeps its mean."""
    before = hidden.float().mean(dim=(1, 2), keepdim=True)
    weighted = hidden.float() * weights[..., None].to(hidden.device)
    after = weighted.mean(dim=(1, 2), keepdim=True)
    return (weighted * (before / after)).to(hidden.dtype)
