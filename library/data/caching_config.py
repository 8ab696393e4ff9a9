"""The few training-config keys the pre-caching tools need, read from a kohya-style TOML.

The file is resolved by the training config schema (library/training/config_loader.py): same
validation, same sections-or-flat rules, same defaults as the trainer.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

from library.errors import UserError

# Options that change the caption every step make cached text-encoder outputs wrong.
_CAPTION_RANDOMISERS = ("shuffle_caption", "caption_dropout_rate", "caption_tag_dropout_rate", "caption_dropout_every_n_epochs", "token_warmup_step")


@dataclass
class CachingConfig:
    pretrained_model_name_or_path: str
    train_data_dir: str
    vae: str | None = None
    in_json: str | None = None
    resolution: tuple[int, int] = (1024, 1024)
    enable_bucket: bool = False
    min_bucket_reso: int = 256
    max_bucket_reso: int = 1024
    bucket_reso_steps: int = 64
    bucket_no_upscale: bool = False
    flip_aug: bool = False
    alpha_mask: bool = False
    caption_extension: str = ".caption"
    max_token_length: int | None = None
    weighted_captions: bool = False
    mixed_precision: str = "no"
    no_half_vae: bool = False
    fp8_base: bool = False
    fp8_base_unet: bool = False
    vae_batch_size: int = 1
    max_data_loader_n_workers: int = 0
    caption_randomisers: tuple[str, ...] = ()


def read_caching_config(path: str | os.PathLike) -> CachingConfig:
    """The caching keys of a training config, validated by the training schema (so a misspelt key
    fails here exactly as it would in sdxl_train_network.py)."""
    from library.training.config_loader import resolve_config

    path = Path(path)
    args = resolve_config(["--config_file", str(path)]).args
    for required in ("pretrained_model_name_or_path", "train_data_dir"):
        if not getattr(args, required):
            raise UserError(f"{path}: '{required}' is missing; latents and text-encoder outputs are cached from it")
    values = {f.name: getattr(args, f.name) for f in fields(CachingConfig) if f.name != "caption_randomisers" and getattr(args, f.name, None) is not None}
    values["caption_randomisers"] = tuple(k for k in _CAPTION_RANDOMISERS if getattr(args, k))
    return CachingConfig(**values)
