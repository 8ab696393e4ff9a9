"""Load an SDXL model from wherever the user has it: a diffusers folder or a single checkpoint file,
with an optional separate VAE and tokenizer folder. Offline only.

    model = load_sdxl("sd_xl_base_1.0.safetensors", vae="sdxl_vae.safetensors")
    model.unet, model.text_encoder1, model.text_encoder2, model.vae, model.tokenizer1, model.tokenizer2
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from library.errors import UserError
from library.models import sdxl_diffusers, sdxl_single_file
from library.models.checkpoint_file import PICKLE_SUFFIXES, SAFETENSORS_SUFFIXES, load_weights
from library.models.tokenizers import (
    load_tokenizers_from_model_folder,
    load_tokenizers_from_user_folder,
    packaged_clip_tokenizers,
)


@dataclass
class SDXLModel:
    unet: torch.nn.Module
    text_encoder1: torch.nn.Module
    text_encoder2: torch.nn.Module
    vae: torch.nn.Module
    tokenizer1: object
    tokenizer2: object
    source_path: Path
    layout: str  # "diffusers" or "single_file"
    extra_tensors: dict = field(default_factory=dict)

    @property
    def text_encoders(self):
        return [self.text_encoder1, self.text_encoder2]

    @property
    def tokenizers(self):
        return [self.tokenizer1, self.tokenizer2]

    def save_single_file(self, path, dtype: torch.dtype | None = None, metadata: dict | None = None) -> None:
        sdxl_single_file.save_single_file(
            path, self.unet, self.text_encoder1, self.text_encoder2, self.vae, self.extra_tensors, dtype, metadata
        )

    def save_diffusers(self, folder) -> None:
        sdxl_diffusers.save_diffusers_folder(
            Path(folder), self.unet, self.text_encoder1, self.text_encoder2, self.vae, self.tokenizers
        )


def load_vae(path: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """A VAE from a diffusers folder, a model folder with vae/, or a single weights file (any layout)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: VAE not found (--vae); give a .safetensors file or a diffusers vae folder")
    if path.is_dir():
        return sdxl_diffusers.load_vae_folder(path, dtype)
    return sdxl_single_file.vae_from_ldm_state_dict(load_weights(path), path, dtype)


def load_sdxl(
    path: str | os.PathLike,
    vae: str | os.PathLike | None = None,
    tokenizer_dir: str | os.PathLike | None = None,
    dtype: torch.dtype = torch.float32,
    dtypes: dict | None = None,
) -> SDXLModel:
    """Load all SDXL components; every failure is a UserError naming the file and the fix.
    `dtypes` ({"unet", "text_encoder", "vae"} -> dtype) overrides `dtype` per component: each
    tensor is converted once, as it is read, to the dtype it is stored in for training, so no fp32
    copy of an fp16 file's weights is ever made when training in half precision."""
    path = Path(path)
    dtypes = {"unet": dtype, "text_encoder": dtype, "vae": dtype, **(dtypes or {})}
    if not path.exists():
        raise UserError(
            f"{path}: model not found (pretrained_model_name_or_path); give a local SDXL .safetensors file or "
            "diffusers folder (models are never downloaded)"
        )
    if path.is_dir():
        if not sdxl_diffusers.is_diffusers_folder(path):
            raise UserError(f"{path}: folder is not a diffusers SDXL model (no model_index.json or unet/)")
        unet = sdxl_diffusers.load_unet(path, dtypes["unet"])
        te1, te2 = sdxl_diffusers.load_text_encoders(path, dtypes["text_encoder"])
        vae_model = None if vae else sdxl_diffusers.load_vae_folder(path / "vae", dtypes["vae"])
        tokenizers = (
            load_tokenizers_from_user_folder(tokenizer_dir) if tokenizer_dir else load_tokenizers_from_model_folder(path)
        )
        layout, extra = "diffusers", {}
    else:
        if path.suffix.lower() not in SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES:
            raise UserError(f"{path}: unsupported model file type '{path.suffix}'; use .safetensors (or .ckpt)")
        parts = sdxl_single_file.load_single_file(path, dtypes=dtypes)
        unet, te1, te2, vae_model, extra = parts.unet, parts.text_encoder1, parts.text_encoder2, parts.vae, parts.extra_tensors
        tokenizers = load_tokenizers_from_user_folder(tokenizer_dir) if tokenizer_dir else packaged_clip_tokenizers()
        layout = "single_file"
    if vae:
        vae_model = load_vae(vae, dtypes["vae"])
    return SDXLModel(unet, te1, te2, vae_model, tokenizers[0], tokenizers[1], path, layout, extra)
