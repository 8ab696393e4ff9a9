"""The few training-config keys the pre-caching tools need, read from a kohya-style TOML.

Deliberately minimal: `read_caching_config` is the one place to swap for the real training
config schema once it exists. Sections only group keys (a flat file works too).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

from library.data.buckets import parse_resolution
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
    mixed_precision: str = "no"
    no_half_vae: bool = False
    vae_batch_size: int = 1
    max_data_loader_n_workers: int = 0
    caption_randomisers: tuple[str, ...] = ()


def _flatten(data: dict) -> dict:
    """Section tables are merged into one flat mapping (kohya's sections only group options)."""
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return flat


def read_caching_config(path: str | os.PathLike) -> CachingConfig:
    import toml

    path = Path(path)
    try:
        flat = _flatten(toml.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise UserError(f"{path}: config file not found") from None
    except toml.TomlDecodeError as error:
        raise UserError(f"{path}: not valid TOML ({error})") from None
    for required in ("pretrained_model_name_or_path", "train_data_dir"):
        if not flat.get(required):
            raise UserError(f"{path}: '{required}' is missing; latents and text-encoder outputs are cached from it")
    known = {f.name for f in fields(CachingConfig)} - {"caption_randomisers"}
    values = {k: v for k, v in flat.items() if k in known}
    if "resolution" in values:
        values["resolution"] = parse_resolution(str(values["resolution"]), f"{path}: resolution")
    values["caption_randomisers"] = tuple(k for k in _CAPTION_RANDOMISERS if flat.get(k))
    if values.get("max_token_length") not in (None, 75, 150, 225):
        raise UserError(f"{path}: max_token_length {values['max_token_length']}: use 75, 150 or 225")
    try:
        return CachingConfig(**values)
    except TypeError as error:
        raise UserError(f"{path}: {error}") from None
