"""Data-parallel training through accelerate's DDP engine (one process per GPU, or per CPU rank).

A LoRA network is not called by itself: its modules are patched into the UNet and the text
encoders, so wrapping the network in DDP alone would never run DDP's forward, and DDP's gradient
hooks would stay disarmed (which is why kohya all-reduces every gradient by hand after backward).
Here DDP wraps `TrainableWeights`, a module whose parameters are exactly the trained tensors (the
network's and pivotal tuning's new token rows) and whose forward runs the training forward pass it
is handed. DDP therefore sees the pass that uses its parameters: gradients are averaged in ~25 MB
buckets while backward is still running, overlapped with it, instead of one collective per tensor
afterwards.

- `find_unused_parameters`: module_dropout skips whole LoRA modules, differently on each process,
  and pivotal rows stop training at the pivot; DDP then contributes zeros for the skipped
  tensors instead of waiting for them (a hang with NCCL, "collective mismatch" with gloo).
- Gradient accumulation: batches before the last of an accumulation group run under
  `accelerator.no_sync`, so only the last one communicates.
- Buffers (LoRA alphas) are constants: not re-broadcast before every forward.
- kohya's ddp_timeout, ddp_gradient_as_bucket_view and ddp_static_graph reach DDP and the process
  group. static_graph assumes the same tensors train every step: not with module_dropout.
"""
from __future__ import annotations

import contextlib
import hashlib
from datetime import timedelta

import torch
from torch import nn

from library.errors import UserError


class TrainableWeights(nn.Module):
    """What DDP wraps: the trained tensors as parameters; forward(fn, *args) returns fn(*args)."""

    def __init__(self, network: nn.Module, extra: list[nn.Parameter]):
        super().__init__()
        self.network = network
        self.extra = nn.ParameterList(extra)

    def forward(self, compute, *args, **kwargs):
        return compute(*args, **kwargs)


def accelerator_kwargs_handlers(args) -> list:
    """DDP and process-group settings for `Accelerator(kwargs_handlers=...)`."""
    from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

    from library.lora.network_args import split_network_args

    check_static_graph(args, split_network_args(args.network_args))
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=not args.ddp_static_graph, broadcast_buffers=False,
                                              gradient_as_bucket_view=bool(args.ddp_gradient_as_bucket_view),
                                              static_graph=bool(args.ddp_static_graph))]
    if args.ddp_timeout:
        handlers.append(InitProcessGroupKwargs(timeout=timedelta(minutes=args.ddp_timeout)))
    return handlers


def check_static_graph(args, network_args: dict) -> None:
    if args.ddp_static_graph and float(network_args.get("module_dropout", 0) or 0) > 0:
        raise UserError("ddp_static_graph = true assumes the same LoRA modules train every step; module_dropout skips "
                        "different ones on each process. Remove one of them")


def prepare(accelerator, network: nn.Module, extra: list[nn.Parameter]) -> nn.Module:
    """TrainableWeights, wrapped in DDP when several processes train (itself otherwise)."""
    return accelerator.prepare(TrainableWeights(network, extra))


def gradient_sync(accelerator, model: nn.Module, sync: bool):
    """The context for one batch's forward and backward: no gradient communication unless `sync`."""
    return contextlib.nullcontext() if sync else accelerator.no_sync(model)


@torch.no_grad()
def weights_digest(tensors) -> int:
    """A 56-bit digest of the tensors' exact bytes (bf16/fp16 included)."""
    digest = hashlib.blake2b(digest_size=7)
    for tensor in tensors:
        data = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(data.view(torch.uint8).numpy().tobytes())
    return int.from_bytes(digest.digest(), "little")


def check_in_sync(accelerator, tensors, step: int) -> None:
    """ddp_check_sync: every process must hold bit-identical trained weights after a step."""
    local = torch.tensor([weights_digest(tensors)], dtype=torch.int64, device=accelerator.device)
    gathered = accelerator.gather(local)
    if not torch.equal(gathered, gathered[:1].expand_as(gathered)):
        raise UserError(f"processes hold different network weights after step {step} (digests {gathered.tolist()}); "
                        "launch with accelerate launch --multi_gpu (on CPU too) so gradients are shared")
