"""fp8_base / fp8_base_unet: frozen Linear and Conv2d weights stored as float8_e4m3fn, upcast per layer.

Each frozen nn.Linear / nn.Conv2d of the base model keeps its weight as float8_e4m3fn with one
scale per output channel (amax / 448, the format's largest finite value), and its class becomes
`Fp8Linear` / `Fp8Conv2d`, whose forward rebuilds the weight in the compute dtype (the autocast
dtype, else the input's) for that layer only. The same code runs on the CPU and on a GPU.

Differences from kohya, deliberately:
- kohya casts weights to fp8 without a scale, so SDXL's many weights below 2^-6 (fp8's smallest
  normal number) lose most of their precision; a per-channel scale keeps 3 mantissa bits for each.
- the backward pass of a frozen fp8 layer keeps only its fp8 weight (it needs no input activation:
  the weight gets no gradient), where autocast would save the upcast bf16 copy of every layer for
  backward, bringing the memory fp8 saved back during the backward pass.
Norms, biases, embeddings and everything outside Linear/Conv2d stay in the compute dtype.

Trainable networks wrap these layers as they wrap nn.Linear (they are subclasses); networks that
rebuild the weight from `org_module.weight` (LyCORIS outside bypass mode) must use bypass mode,
which networks/lycoris_kohya.py switches on.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The autocast dtype when autocast is on for x's device, else x's own (meta: no autocast)."""
    device = x.device.type
    if device == "meta" or not torch.is_autocast_enabled(device):
        return x.dtype
    return torch.get_autocast_dtype(device)


def dequantize(weight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The layer's weight in `dtype`, multiplied out in fp32 (then rounded once)."""
    shape = (-1,) + (1,) * (weight.dim() - 1)
    return (weight.float() * scale.float().view(shape)).to(dtype)


def quantize(weight: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp8 weight on `device`, per-output-channel float32 scale): weight ~= fp8 * scale. The scale stays
    float32 whatever the training dtype: amax / 448 is subnormal in fp16 below amax ~0.027, and small
    layers would lose their scale's precision."""
    weight = weight.detach().float()
    amax = weight.abs().reshape(weight.shape[0], -1).amax(dim=1).clamp(min=1e-12)
    scale = amax / FP8_MAX
    shape = (-1,) + (1,) * (weight.dim() - 1)
    stored = (weight / scale.view(shape)).clamp(-FP8_MAX, FP8_MAX).to(device, FP8)
    return stored, scale.to(device, torch.float32)


class _LinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, scale, bias):
        ctx.save_for_backward(weight, scale)
        return F.linear(x, dequantize(weight, scale, x.dtype), bias)

    @staticmethod
    def backward(ctx, grad):
        weight, scale = ctx.saved_tensors
        grad_x = grad @ dequantize(weight, scale, grad.dtype) if ctx.needs_input_grad[0] else None
        return grad_x, None, None, None


class _Conv2dFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, scale, bias, stride, padding, dilation, groups):
        ctx.save_for_backward(weight, scale)
        ctx.conf = (x.shape, stride, padding, dilation, groups)
        return F.conv2d(x, dequantize(weight, scale, x.dtype), bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad):
        weight, scale = ctx.saved_tensors
        shape, stride, padding, dilation, groups = ctx.conf
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.nn.grad.conv2d_input(shape, dequantize(weight, scale, grad.dtype), grad, stride, padding, dilation, groups)
        return grad_x, None, None, None, None, None, None, None


class Fp8Linear(nn.Linear):
    """nn.Linear whose frozen weight is stored in fp8 (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = compute_dtype(x)
        bias = None if self.bias is None else self.bias.to(dtype)
        return _LinearFn.apply(x.to(dtype), self.weight, self.weight_scale, bias)


class Fp8Conv2d(nn.Conv2d):
    """nn.Conv2d whose frozen weight is stored in fp8 (zeros padding only, as in SDXL)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = compute_dtype(x)
        bias = None if self.bias is None else self.bias.to(dtype)
        return _Conv2dFn.apply(x.to(dtype), self.weight, self.weight_scale, bias, self.stride, self.padding, self.dilation, self.groups)


_FP8_CLASSES = {nn.Linear: Fp8Linear, nn.Conv2d: Fp8Conv2d}


@torch.no_grad()
def store_in_fp8(model: nn.Module, device, dtype: torch.dtype) -> nn.Module:
    """Move `model` to `device`: Linear/Conv2d weights as fp8 (+ scale), every other tensor in `dtype`.
    Each tensor is converted and moved once; the fp32 model never reaches the device."""
    for module in model.modules():
        fp8_class = _FP8_CLASSES.get(type(module))
        if fp8_class is not None and module.weight.requires_grad is False:
            if fp8_class is Fp8Conv2d and module.padding_mode != "zeros":
                continue
            stored, scale = quantize(module.weight, device)
            module.weight = nn.Parameter(stored, requires_grad=False)
            module.register_buffer("weight_scale", scale)
            module.__class__ = fp8_class
        for name, param in list(module.named_parameters(recurse=False)):
            if param.dtype != FP8:
                param.data = param.data.to(device, dtype if param.is_floating_point() else None)
        for name, buffer in list(module.named_buffers(recurse=False)):
            if buffer.dtype != FP8 and name != "weight_scale":
                setattr(module, name, buffer.to(device, dtype if buffer.is_floating_point() else None))
    return model


def weight_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer of `model` (fp8 weights count one byte per value)."""
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
