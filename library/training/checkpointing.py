"""Gradient checkpointing of the UNet, optionally with the checkpoints offloaded to host memory.

With gradient checkpointing, each UNet block keeps only its inputs for backward and recomputes the
rest. cpu_offload_checkpointing (kohya's option) moves those inputs to host memory during the
forward pass and back to the GPU when the block is recomputed in backward, so the GPU holds one
block's activations at a time; the copies are part of the autograd graph (to("cpu") / to(device)),
so gradients flow through them unchanged. On a CPU the inputs already live in host memory: the
option is a no-op there, and says so.
"""
from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint


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


def enable_unet_checkpointing(unet, offload: bool, device: torch.device, notices: list) -> None:
    if offload and device.type == "cpu":
        notices.append("cpu_offload_checkpointing is a no-op on the CPU (the checkpointed activations already live in host memory)")
    unet.enable_gradient_checkpointing(offloaded_checkpoint if offload and device.type != "cpu" else None)
