"""SDXL single-file checkpoints in the original Stability layout: load to diffusers/transformers
modules, and save back.

Layout: `model.diffusion_model.*` (UNet, SAI names), `conditioner.embedders.0.transformer.*` (TE1, HF
names), `conditioner.embedders.1.model.*` (TE2, OpenCLIP names), `first_stage_model.*` (VAE, ldm names).
Keys that no component holds (logit_scale, position_ids, ...) are kept and written back on save, so a
load/save round trip keeps the file's key set.
"""
from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch

from library.errors import UserError
from library.file_io import save_safetensors_atomic
from library.models import sdxl_architecture as arch
from library.models.checkpoint_file import PICKLE_SUFFIXES, load_weights, read_safetensors_header, safetensors_errors
from library.models.model_build import assign_weights, empty_text_encoder, empty_unet, empty_vae
from library.models.text_encoder_names import (
    TE1_PREFIX,
    TE2_EXTRA_KEYS,
    TE2_PREFIX,
    te1_from_checkpoint,
    te1_to_checkpoint,
    te2_from_checkpoint,
    te2_to_checkpoint,
)
from library.models.unet_names import layout_from_config, unet_state_dict_to_diffusers, unet_state_dict_to_sai
from library.models.vae_names import vae_state_dict_to_diffusers, vae_state_dict_to_ldm

STORED_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}
COMPONENT_PREFIXES = (arch.UNET_PREFIX, TE1_PREFIX, TE2_PREFIX, arch.VAE_PREFIX)


@dataclass
class SingleFileComponents:
    unet: torch.nn.Module
    text_encoder1: torch.nn.Module
    text_encoder2: torch.nn.Module
    vae: torch.nn.Module
    extra_tensors: dict = field(default_factory=dict)


class _TensorSource:
    """Uniform access to a safetensors file (tensor by tensor) or an already loaded dict.

    A tensor wanted in the dtype it is stored in is the file's memory-mapped view (no copy). One
    wanted in another dtype is read into a buffer of its own size and converted, so the process
    never maps the whole file next to the converted copies (loading fp16 SDXL for a bf16 run peaked
    at the mapped 6.9 GB plus the copies; see docs/performance.md)."""

    def __init__(self, path: Path):
        self.path = path
        if path.suffix.lower() in PICKLE_SUFFIXES:
            self._tensors = load_weights(path)
            self.shapes = {k: tuple(v.shape) for k, v in self._tensors.items()}
            self._handle = None
        else:
            from safetensors import safe_open

            self._entries, _ = read_safetensors_header(path)
            self.shapes = {key: tuple(entry["shape"]) for key, entry in self._entries.items()}
            with open(path, "rb") as handle:
                self._data_start = 8 + struct.unpack("<Q", handle.read(8))[0]
            self._tensors = None
            with safetensors_errors(path):
                self._handle = safe_open(str(path), framework="pt", device="cpu")

    def _read_as(self, key: str, dtype: torch.dtype) -> torch.Tensor | None:
        """The tensor read (not mapped) and converted to `dtype`; None when no conversion is needed."""
        entry = self._entries[key]
        stored = STORED_DTYPES.get(entry["dtype"])
        if stored is None or stored == dtype or not stored.is_floating_point:
            return None
        start, end = entry["data_offsets"]
        buffer = torch.empty(end - start, dtype=torch.uint8)
        with open(self.path, "rb") as handle:
            handle.seek(self._data_start + start)
            if handle.readinto(memoryview(buffer.numpy())) != end - start:
                raise UserError(f"{self.path}: file is truncated inside '{key}'; download or copy it again")
        return buffer.view(stored).reshape(entry["shape"]).to(dtype)

    def get(self, keys, dtype: torch.dtype | None) -> dict:
        out = {}
        for key in keys:
            if self._tensors is not None:
                tensor = self._tensors[key]
            else:
                tensor = self._read_as(key, dtype) if dtype is not None else None
                if tensor is not None:
                    out[key] = tensor
                    continue
                with safetensors_errors(self.path):
                    tensor = self._handle.get_tensor(key)
            out[key] = tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
        return out


def describe_non_sdxl(path: Path, keys) -> str | None:
    """Why a key set is not an SDXL checkpoint, or None if it looks like one."""
    keys = list(keys)
    if any(k.startswith(arch.UNET_PREFIX) for k in keys) and any(k.startswith("conditioner.embedders.") for k in keys):
        return None
    if any(k.startswith(("lora_unet_", "lora_te", "lora_te1_")) for k in keys) or any(".lora_" in k for k in keys):
        return f"{path}: is a LoRA file, not a base model; pass it as network_weights or to a merge tool"
    if any(k.startswith("cond_stage_model.") for k in keys):
        return f"{path}: is a Stable Diffusion 1.x/2.x checkpoint, not SDXL; use an SDXL base model"
    if any(k.startswith(("down_blocks.", "conv_in.", "mid_block.")) for k in keys):
        return f"{path}: holds a single diffusers component; pass the whole diffusers folder (with unet/, text_encoder/ ...)"
    if any(k.startswith(("encoder.down.", "decoder.up.", "first_stage_model.")) for k in keys) and not any(
        k.startswith(arch.UNET_PREFIX) for k in keys
    ):
        return f"{path}: is a VAE, not a full SDXL model; pass it with --vae"
    return f"{path}: not an SDXL checkpoint (no model.diffusion_model.* and conditioner.embedders.* keys)"


def load_single_file(path: str | os.PathLike, dtype: torch.dtype = torch.float32, dtypes: dict | None = None) -> SingleFileComponents:
    """The four components; `dtypes` ({"unet", "text_encoder", "vae"} -> dtype) overrides `dtype` per
    component. Tensors are converted one by one as they are read from the memory-mapped file (a
    tensor already in its dtype is the file's own mapped view: no copy at all)."""
    path = Path(path)
    dtypes = {"unet": dtype, "text_encoder": dtype, "vae": dtype, **(dtypes or {})}
    source = _TensorSource(path)
    problem = describe_non_sdxl(path, source.shapes)
    if problem:
        raise UserError(problem)
    groups = arch.split_checkpoint_shapes(source.shapes)
    unet_config = arch.infer_unet_config(groups["unet"])
    te1_config = arch.infer_te1_config(groups["te1"])
    te2_config = arch.infer_te2_config(groups["te2"])
    if not groups["vae"]:
        raise UserError(f"{path}: checkpoint has no VAE (first_stage_model.*); pass one with --vae")
    vae_config = arch.infer_vae_config(groups["vae"])

    layout = layout_from_config(unet_config)
    unet_keys = [arch.UNET_PREFIX + k for k in groups["unet"]]
    unet_sd = {k[len(arch.UNET_PREFIX):]: v for k, v in source.get(unet_keys, dtypes["unet"]).items()}
    try:
        unet_sd = unet_state_dict_to_diffusers(unet_sd, layout)
    except ValueError as error:
        raise UserError(f"{path}: {error}") from None
    unet = assign_weights(empty_unet(unet_config), unet_sd, "UNet", path)
    del unet_sd

    te1 = empty_text_encoder(te1_config, with_projection=False)
    has_level = any(k.startswith("text_model.") for k in te1.state_dict())
    te1_keys = [TE1_PREFIX + k for k in groups["te1"]]
    te1 = assign_weights(te1, te1_from_checkpoint(source.get(te1_keys, dtypes["text_encoder"]), has_level), "text encoder 1", path)

    te2_keys = [TE2_PREFIX + k for k in groups["te2"] if TE2_PREFIX + k not in TE2_EXTRA_KEYS]
    te2 = assign_weights(
        empty_text_encoder(te2_config, with_projection=True),
        te2_from_checkpoint(source.get(te2_keys, dtypes["text_encoder"])),
        "text encoder 2",
        path,
    )

    vae_keys = [arch.VAE_PREFIX + k for k in groups["vae"]]
    vae_sd = {k[len(arch.VAE_PREFIX):]: v for k, v in source.get(vae_keys, dtypes["vae"]).items()}
    vae_sd = vae_state_dict_to_diffusers(vae_sd, len(vae_config["block_out_channels"]), vae_config["layers_per_block"])
    vae = assign_weights(empty_vae(vae_config), vae_sd, "VAE", path)

    consumed = set(unet_keys) | set(te1_keys) | set(te2_keys) | set(vae_keys)
    extra = source.get([k for k in source.shapes if k not in consumed], None)
    return SingleFileComponents(unet, te1, te2, vae, extra)


def vae_from_ldm_state_dict(state_dict: dict, source, dtype: torch.dtype = torch.float32):
    """A VAE from ldm-layout keys (with or without `first_stage_model.`) or diffusers-layout keys."""
    sd = {k[len(arch.VAE_PREFIX):] if k.startswith(arch.VAE_PREFIX) else k: v for k, v in state_dict.items()}
    sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items() if k.startswith(("encoder.", "decoder.", "quant_conv.", "post_quant_conv."))}
    if "encoder.conv_in.weight" not in sd:
        raise UserError(f"{source}: not a VAE (no encoder.conv_in.weight)")
    if any(k.startswith("encoder.down_blocks.") for k in sd):  # already diffusers layout
        levels = {int(k.split(".")[2]) for k in sd if k.startswith("encoder.down_blocks.")}
        ldm_like = vae_state_dict_to_ldm(sd, len(levels), len({k.split(".")[4] for k in sd if k.startswith("encoder.down_blocks.0.resnets.")}))
        config = arch.infer_vae_config({k: tuple(v.shape) for k, v in ldm_like.items()})
    else:
        config = arch.infer_vae_config({k: tuple(v.shape) for k, v in sd.items()})
        sd = vae_state_dict_to_diffusers(sd, len(config["block_out_channels"]), config["layers_per_block"])
    return assign_weights(empty_vae(config), sd, "VAE", source)


def checkpoint_state_dict(unet, text_encoder1, text_encoder2, vae, extra_tensors: dict | None = None) -> dict:
    """All four components as one state dict in the original SDXL single-file layout."""
    layout = layout_from_config(unet.config)
    out = {arch.UNET_PREFIX + k: v for k, v in unet_state_dict_to_sai(unet.state_dict(), layout).items()}
    out.update(te1_to_checkpoint(text_encoder1.state_dict()))
    out.update(te2_to_checkpoint(text_encoder2.state_dict()))
    vae_config = vae.config
    ldm = vae_state_dict_to_ldm(vae.state_dict(), len(vae_config["block_out_channels"]), vae_config["layers_per_block"])
    out.update({arch.VAE_PREFIX + k: v for k, v in ldm.items()})
    extra = dict(extra_tensors or {})
    # OpenCLIP's logit scale is part of every original SDXL file; ln(100) is its trained value.
    extra.setdefault(TE2_EXTRA_KEYS[0], torch.tensor(math.log(100.0)))
    for key, value in extra.items():
        out.setdefault(key, value)
    return out


def save_single_file(
    path: str | os.PathLike,
    unet,
    text_encoder1,
    text_encoder2,
    vae,
    extra_tensors: dict | None = None,
    dtype: torch.dtype | None = None,
    metadata: dict | None = None,
) -> None:
    """Write an SDXL single-file `.safetensors` checkpoint atomically."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise UserError(f"{path}: single-file checkpoints are saved as .safetensors only")
    state_dict = checkpoint_state_dict(unet, text_encoder1, text_encoder2, vae, extra_tensors)
    if dtype is not None:
        state_dict = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state_dict.items()}
    state_dict = {k: v.detach().cpu() for k, v in state_dict.items()}
    save_safetensors_atomic(state_dict, path, metadata={"format": "pt", **(metadata or {})})
