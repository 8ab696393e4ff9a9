"""Precision, attention backend and memory options for training, decided before models load.

Each helper handles one option family. Precision runs as configured on every device (the CPU
included: autocast, GradScaler and float8 tensors exist there), so the tested path is the GPU path;
where each model lives and in which dtype is library/training/residency/placement.py's business.
"""
from __future__ import annotations

import importlib.util

import torch

from library.errors import UserError



def has_cuda() -> bool:
    return torch.cuda.is_available()


def check_precision(args) -> None:
    """The precision options that only work together; before any model loads (--print_config too)."""
    requested = args.mixed_precision
    if args.full_fp16 and requested != "fp16":
        raise UserError("full_fp16 needs mixed_precision = \"fp16\"")
    if args.full_bf16 and requested != "bf16":
        raise UserError("full_bf16 needs mixed_precision = \"bf16\"")
    if (args.fp8_base or args.fp8_base_unet) and requested == "no":
        raise UserError("fp8_base / fp8_base_unet need mixed_precision = \"bf16\" or \"fp16\" (the dtype fp8 weights are computed in)")


def effective_mixed_precision(args, notices: list) -> str:
    """kohya's mixed_precision, checked against full_fp16/full_bf16/fp8_base; it runs as configured on
    any device (CPU autocast does fp16 and bf16), with a notice on a CPU without kernels for it."""
    requested = args.mixed_precision
    check_precision(args)
    if requested != "no" and not has_cuda() and not cpu_has_half_kernels(requested):
        notices.append(f"mixed_precision = \"{requested}\" on this CPU is correct but slow: it has no {requested} matrix instructions "
                       f"({_CPU_INSTRUCTIONS[requested]}), so convolutions and matmuls take a path tens of times slower than fp32")
    return requested


_CPU_INSTRUCTIONS = {"bf16": "AVX-512 BF16 or AMX", "fp16": "AVX-512 FP16 or AMX-FP16"}


def cpu_has_half_kernels(mixed_precision: str) -> bool:
    """Whether oneDNN runs this half dtype's convolutions and matmuls natively on this CPU."""
    try:
        ops = torch.ops.mkldnn
        return bool(ops._is_mkldnn_bf16_supported() if mixed_precision == "bf16" else ops._is_mkldnn_fp16_supported())
    except (AttributeError, RuntimeError):
        return False




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
