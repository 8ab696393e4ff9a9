"""A checkpoint with the real SDXL 1.0 architecture and random weights, written without a download.

The shapes come from the project's own configs (library/models/sdxl_architecture.py): the four
components are built on the meta device, their state dict is put in the single-file layout by the
same code that saves real checkpoints, and each tensor is then generated and streamed to disk one
at a time in fp16 (as sd_xl_base_1.0.safetensors is stored), so writing the 6.9 GB file needs no
more memory than its largest tensor. Weights are scaled like a default initialisation (normal with
std 1/sqrt(fan_in); norm scales 1, biases 0), so activations stay finite through the whole UNet.
"""
from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import torch

SAFETENSORS_DTYPES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32", torch.int64: "I64"}


def meta_state_dict(text_encoder_layers: int | None = None) -> dict[str, torch.Tensor]:
    """The real SDXL single-file key set with meta tensors (non-meta buffers such as position ids kept).
    `text_encoder_layers`: fewer transformer layers in both text encoders (their widths, and so the
    UNet's conditioning, stay real): for training runs with cached text outputs, where the encoders
    only encode the captions once, so the file and the load stay small."""
    from library.models import sdxl_architecture as arch
    from library.models.model_build import empty_text_encoder, empty_unet, empty_vae
    from library.models.sdxl_single_file import checkpoint_state_dict

    unet = empty_unet(arch.SDXL_UNET_CONFIG)
    layers = {"num_hidden_layers": text_encoder_layers} if text_encoder_layers else {}
    te1 = empty_text_encoder({**arch.SDXL_TE1_CONFIG, **arch.CLIP_TOKEN_IDS, **layers}, with_projection=False)
    te2 = empty_text_encoder({**arch.SDXL_TE2_CONFIG, **arch.CLIP_TOKEN_IDS, **layers}, with_projection=True)
    vae = empty_vae(arch.SDXL_VAE_CONFIG)
    return checkpoint_state_dict(unet, te1, te2, vae)


def random_tensor(key: str, like: torch.Tensor, generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    if like.device.type != "meta":  # real buffers (position ids, logit scale) keep their values
        return like.to(dtype) if like.is_floating_point() else like
    shape = tuple(like.shape)
    if len(shape) >= 2:
        fan_in = math.prod(shape[1:])
        std = 0.02 if "embedding" in key else 1.0 / math.sqrt(fan_in)
        return (torch.randn(shape, generator=generator) * std).to(dtype)
    if key.endswith("bias"):
        return torch.zeros(shape, dtype=dtype)
    return torch.ones(shape, dtype=dtype)  # norm scales


def write_real_size_model(path: str | Path, dtype: torch.dtype = torch.float16, seed: int = 0,
                          text_encoder_layers: int | None = None) -> Path:
    """The file at `path` (kept when it exists): real SDXL shapes, random weights, `dtype`."""
    from tqdm import tqdm

    from library.file_io import atomic_path

    path = Path(path)
    if path.exists():
        return path
    state = meta_state_dict(text_encoder_layers)
    header, offset, order = {}, 0, sorted(state)
    for key in order:
        tensor = state[key]
        stored = dtype if tensor.is_floating_point() else tensor.dtype
        size = tensor.numel() * torch.empty((), dtype=stored).element_size()
        header[key] = {"dtype": SAFETENSORS_DTYPES[stored], "shape": list(tensor.shape), "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = {"format": "pt", "modelspec.title": f"SDXL 1.0 architecture, random weights (seed {seed})"
                                                      + (f", {text_encoder_layers}-layer text encoders" if text_encoder_layers else "")}
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
    generator = torch.Generator().manual_seed(seed)
    with atomic_path(path) as temp, open(temp, "wb") as out:
        out.write(struct.pack("<Q", len(encoded)))
        out.write(encoded)
        for key in tqdm(order, desc="writing a real-size random SDXL", unit="tensor"):
            tensor = random_tensor(key, state[key], generator, dtype).contiguous()
            out.write(tensor.view(torch.uint8).numpy().tobytes() if tensor.dim() else tensor.reshape(1).view(torch.uint8).numpy().tobytes())
    return path
