"""Precision, attention backend and memory options for training, decided before models load.

Each helper handles one option family and says in one line what it did when the hardware forces
a different choice (e.g. fp16 requested on a machine without a GPU trains in fp32).
"""
from __future__ import annotations

import importlib.util

import torch

from library.errors import UserError

_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_SAVE_DTYPES = {None: None, "float": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def has_cuda() -> bool:
    return torch.cuda.is_available()


def effective_mixed_precision(args, notices: list) -> str:
    """kohya's mixed_precision, downgraded to fp32 (with a notice) where the hardware lacks it."""
    requested = args.mixed_precision
    if requested != "no" and not has_cuda():
        notices.append(f"mixed_precision = \"{requested}\" needs a GPU; training in fp32 on the CPU")
        if args.full_fp16 or args.full_bf16:
            notices.append("full_fp16/full_bf16 ignored on the CPU (fp32 training)")
            args.full_fp16 = args.full_bf16 = False
        return "no"
    if args.full_fp16 and requested != "fp16":
        raise UserError("full_fp16 needs mixed_precision = \"fp16\"")
    if args.full_bf16 and requested != "bf16":
        raise UserError("full_bf16 needs mixed_precision = \"bf16\"")
    return requested


def weight_dtype(mixed_precision: str) -> torch.dtype:
    """dtype of the frozen base weights (the trainable LoRA stays fp32 unless full_fp16/bf16)."""
    return _DTYPES[mixed_precision]


def save_dtype(save_precision: str | None) -> torch.dtype | None:
    return _SAVE_DTYPES[save_precision]


def check_fp8(args) -> None:
    if not (args.fp8_base or args.fp8_base_unet):
        return
    if not has_cuda():
        raise UserError("fp8_base / fp8_base_unet need a CUDA GPU with fp8 support (Ada or newer); remove them on this machine")
    raise UserError("fp8_base / fp8_base_unet are not supported yet by this toolkit; train with mixed_precision = \"bf16\" instead")


def configure_attention(unet, args, notices: list) -> str:
    """SDPA by default; mem_eff_attn maps to SDPA; xformers only with a GPU and the package."""
    if args.xformers:
        if not has_cuda():
            raise UserError("xformers needs a CUDA GPU (it does not run on the CPU); use sdpa = true instead")
        if importlib.util.find_spec("xformers") is None:
            raise UserError("xformers = true but the xformers package is not installed: pip install xformers, or use sdpa = true")
        unet.enable_xformers_memory_efficient_attention()
        return "xformers"
    if args.mem_eff_attn:
        notices.append("mem_eff_attn uses PyTorch SDPA (its memory-efficient kernel) in this toolkit")
    from diffusers.models.attention_processor import AttnProcessor2_0

    unet.set_attn_processor(AttnProcessor2_0())
    return "sdpa"
