"""Precision names -> torch dtypes: the one table that mixed_precision, save_precision, the caching
tools' VAE dtype and the tools' --precision all read."""
from __future__ import annotations

import torch

from library.errors import UserError

DTYPES = {"no": torch.float32, "float": torch.float32, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16"}


def dtype_for(name: str, option: str, accepted: tuple[str, ...] = ("float", "fp16", "bf16")) -> torch.dtype:
    """`name` given to `option` -> its dtype; a name outside `accepted` is a one-line error."""
    if name not in accepted:
        raise UserError(f"{option} '{name}' is not one of {', '.join(accepted)}")
    return DTYPES[name]


def precision_name(dtype: torch.dtype) -> str:
    """The name a dtype has in cache fingerprints and messages: "fp32", "fp16" or "bf16"."""
    return _NAMES.get(dtype, "fp32")
