"""SDXL in diffusers folder layout (unet/, text_encoder/, text_encoder_2/, vae/, tokenizer*/): load
and save, strictly from local files.
"""
from __future__ import annotations

from pathlib import Path

import torch

from library.errors import UserError
from library.models.sdxl_architecture import CLIP_TOKEN_IDS, SDXL_SCHEDULER_CONFIG

COMPONENT_FOLDERS = ("unet", "text_encoder", "text_encoder_2", "vae")


def is_diffusers_folder(path: Path) -> bool:
    return path.is_dir() and ((path / "model_index.json").exists() or (path / "unet").is_dir())


def _weights_variant(folder: Path) -> str | None:
    """'fp16' when a component folder only has fp16-variant weight files."""
    names = [p.name for p in folder.glob("*.safetensors")] + [p.name for p in folder.glob("*.bin")]
    if names and all(".fp16." in n for n in names):
        return "fp16"
    return None


def _check_component(root: Path, name: str) -> Path:
    folder = root / name
    if not folder.is_dir():
        raise UserError(f"{root}: diffusers SDXL folder has no '{name}/'; is this an SDXL model folder?")
    if not (folder / "config.json").exists():
        raise UserError(f"{folder}: missing config.json; copy the complete '{name}/' folder of the model")
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        raise UserError(f"{folder}: no weight files (*.safetensors); the download of '{name}/' is incomplete")
    return folder


def fix_text_encoder_token_ids(text_encoder) -> None:
    """Pool at the first EOS token instead of the legacy 'highest token id' rule (eos_token_id == 2).

    Identical for ordinary prompts, and still right once new tokens (pivotal tuning) are added.
    """
    for key, value in CLIP_TOKEN_IDS.items():
        setattr(text_encoder.config, key, value)
    for module in text_encoder.modules():
        if hasattr(module, "eos_token_id"):
            module.eos_token_id = CLIP_TOKEN_IDS["eos_token_id"]


def load_unet(root: Path, dtype: torch.dtype):
    from diffusers import UNet2DConditionModel

    folder = _check_component(root, "unet")
    return _from_pretrained(UNet2DConditionModel, folder, dtype, "torch_dtype")


def load_vae_folder(folder: Path, dtype: torch.dtype):
    from diffusers import AutoencoderKL

    if not (folder / "config.json").exists() and (folder / "vae").is_dir():
        folder = folder / "vae"
    if not (folder / "config.json").exists():
        raise UserError(f"{folder}: not a diffusers VAE folder (no config.json)")
    return _from_pretrained(AutoencoderKL, folder, dtype, "torch_dtype")


def load_text_encoders(root: Path, dtype: torch.dtype):
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    te1 = _from_pretrained(CLIPTextModel, _check_component(root, "text_encoder"), dtype, "dtype")
    te2 = _from_pretrained(CLIPTextModelWithProjection, _check_component(root, "text_encoder_2"), dtype, "dtype")
    for te in (te1, te2):
        fix_text_encoder_token_ids(te)
    return te1, te2


def _from_pretrained(cls, folder: Path, dtype: torch.dtype, dtype_kwarg: str):
    kwargs = {dtype_kwarg: dtype, "local_files_only": True}
    variant = _weights_variant(folder)
    if variant:
        kwargs["variant"] = variant
    try:
        model = cls.from_pretrained(str(folder), **kwargs)
    except (OSError, ValueError, EnvironmentError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"{folder}: cannot load {cls.__name__} ({first})") from None
    return model.eval()


def save_diffusers_folder(folder: Path, unet, text_encoder1, text_encoder2, vae, tokenizers, scheduler=None) -> None:
    """Write a StableDiffusionXLPipeline folder (safetensors weights, tokenizers, scheduler) into a
    hidden folder beside `folder` and rename it into place, so a full disk or a killed process never
    leaves a half model. An existing `folder` is replaced only when it is a diffusers model (it holds
    model_index.json) or empty: anything else there would be deleted with it."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    from library.file_io import atomic_folder

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder}: is a file; a diffusers model is written as a folder: choose a folder name")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / "model_index.json").is_file():
        raise UserError(f"{folder}: this folder holds other files and no diffusers model (model_index.json); the model is "
                        "written as a whole folder and would replace it: choose a new or empty folder")

    scheduler = scheduler or EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG)
    pipeline = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder1,
        text_encoder_2=text_encoder2,
        tokenizer=tokenizers[0],
        tokenizer_2=tokenizers[1],
        unet=unet,
        scheduler=scheduler,
    )
    with atomic_folder(folder) as temporary:
        pipeline.save_pretrained(str(temporary), safe_serialization=True)
