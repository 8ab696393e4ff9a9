"""Gradient checkpointing of the UNet: what is recomputed, and optionally offloaded to host memory.

With gradient checkpointing, each UNet block keeps only its inputs for backward and recomputes the
rest (policy "full", kohya's). Policy "selective" makes one exception: in the transformer blocks of
the UNet's deepest level (SDXL's 1280-wide ones: 60 of its 70 transformer layers and about 70% of
its FLOPs, at a quarter of the tokens of the level above) the outputs of the frozen layers' matmuls
and of attention are kept and only the cheap work is recomputed (element-wise ops, norms, and the
LoRA's rank-sized products), so backward does not redo the step's largest GEMMs. The results are the
same numbers and a step is ~14% faster at real SDXL size (512 px bf16 on this project's CPU), for
more activation memory: about 0.7 GiB at 512 px and 2.6 GiB at 1024 px in bf16, batch 1
(docs/performance.md). "auto" (the default) is resolved by the memory check before the models load
(library/training/memory/memory_preflight.py): selective when it fits, else full.

cpu_offload_checkpointing (kohya's option) moves the block inputs to host memory during the forward
pass and back to the GPU when the block is recomputed in backward, so the GPU holds one
block's activations at a time; the copies are part of the autograd graph (to("cpu") / to(device)),
so gradients flow through them unchanged. On a CPU the inputs already live in host memory: the
option is a no-op there, and says so.
"""
from __future__ import annotations

import functools

import torch
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

# What the selective policy keeps: matmuls (Linear layers, the LoRA's own included) and attention
# kernels (CPU flash; CUDA flash and memory-efficient): outputs that are expensive to recompute.
KEPT_OPS = {op for op in (getattr(torch.ops.aten, name).default for name in (
    "mm", "addmm", "bmm", "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention"))}


def _first_device(args) -> torch.device | None:
    return next((a.device for a in args if isinstance(a, torch.Tensor)), None)


def offloaded_checkpoint(block, *args):
    """diffusers' gradient_checkpointing_func: checkpoint `block` with its tensor inputs held in host memory."""
    device = _first_device(args)
    if device is None or device.type == "cpu":
        return checkpoint(block.__call__, *args, use_reentrant=False)
    host = [a.to("cpu") if isinstance(a, torch.Tensor) else a for a in args]

    def run(*held):
        return block(*[a.to(device, non_blocking=True) if isinstance(a, torch.Tensor) else a for a in held])

    return checkpoint(run, *host, use_reentrant=False)


def _keep_expensive(min_contraction: int, ctx, op, *args, **kwargs):
    """Keep attention outputs and the matmuls that contract over at least `min_contraction` (the frozen
    layers' and the LoRA down-projections'); recompute the LoRA up-projections (rank-sized, cheap,
    and as large as the layer's output) and everything else."""
    if op not in KEPT_OPS:
        return CheckpointPolicy.PREFER_RECOMPUTE
    if op in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default):
        left = args[1] if op == torch.ops.aten.addmm.default else args[0]
        if left.shape[-1] < min_contraction:
            return CheckpointPolicy.PREFER_RECOMPUTE
    return CheckpointPolicy.MUST_SAVE


def deepest_transformer_width(unet) -> int:
    """The width of the UNet's widest (deepest-level) transformer blocks: 1280 for SDXL."""
    widths = [m.norm1.normalized_shape[0] for m in unet.modules() if type(m).__name__ == "BasicTransformerBlock"]
    return max(widths, default=0)


def selective_checkpoint(width: int):
    """diffusers' gradient_checkpointing_func: transformer blocks `width` wide keep their matmul and
    attention outputs; every other block is checkpointed whole."""
    policy = functools.partial(_keep_expensive, max(2, width // 2))  # LoRA ranks stay below half the width

    def run(block, *args):
        if type(block).__name__ == "BasicTransformerBlock" and block.norm1.normalized_shape[0] >= width:
            return checkpoint(block.__call__, *args, use_reentrant=False,
                              context_fn=functools.partial(create_selective_checkpoint_contexts, policy))
        return checkpoint(block.__call__, *args, use_reentrant=False)

    return run


def enable_unet_checkpointing(unet, offload: bool, device: torch.device, notices: list, policy: str = "full") -> None:
    """`policy`: "selective" or "full" ("auto" not resolved by the memory check counts as full)."""
    if offload and device.type == "cpu":
        notices.append("cpu_offload_checkpointing is a no-op on the CPU (the checkpointed activations already live in host memory)")
    if offload and device.type != "cpu":  # the least device memory: inputs on the host, everything recomputed
        unet.enable_gradient_checkpointing(offloaded_checkpoint)
    elif policy == "selective":
        unet.enable_gradient_checkpointing(selective_checkpoint(deepest_transformer_width(unet)))
    else:
        unet.enable_gradient_checkpointing(None)
