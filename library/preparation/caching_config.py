"""What the pre-caching tools need from a kohya-style training config, read as the trainer reads it.

The file is resolved by the training config schema (library/training/config/config_loader.py): same
validation, same sections-or-flat rules, same defaults as the trainer. The dataset (DreamBooth
folders, in_json, or dataset_config) is built by the trainer's own code (dataset_config.py and
train_items.py), so the tools see the same images, buckets and captions as training: a cache they
write is one the trainer reuses.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from library.data.images import SkipLog
from library.errors import UserError


@dataclass
class CachingConfig:
    pretrained_model_name_or_path: str
    train_data_dir: str | None = None
    dataset_config: str | None = None
    vae: str | None = None
    flip_aug: bool = False
    alpha_mask: bool = False
    max_token_length: int | None = None
    weighted_captions: bool = False
    mixed_precision: str = "no"
    no_half_vae: bool = False
    fp8_base: bool = False
    fp8_base_unet: bool = False
    vae_batch_size: int = 1
    text_encoder_batch_size: int | None = None
    max_data_loader_n_workers: int = 0
    caption_randomisers: tuple[str, ...] = ()
    items: list = field(default_factory=list)  # library.training.inputs.train_items.TrainItem, as the trainer builds them
    skipped: SkipLog = field(default_factory=SkipLog)
    notices: list[str] = field(default_factory=list)


def read_caching_config(path: str | os.PathLike) -> CachingConfig:
    """The caching keys and the dataset of a training config, validated by the training schema
    (so a misspelt key fails here exactly as it would in sdxl_train_network.py)."""
    from library.training.config.config_checks import caption_changers
    from library.training.config.config_loader import resolve_config
    from library.training.config.dataset_config import dataset_specs
    from library.training.inputs.train_items import build_items

    path = Path(path)
    args = resolve_config(["--config_file", str(path)]).args
    if not args.pretrained_model_name_or_path:
        raise UserError(f"{path}: 'pretrained_model_name_or_path' is missing; latents and text-encoder outputs are made with it")
    if not (args.train_data_dir or args.dataset_config):
        raise UserError(f"{path}: 'train_data_dir' is missing (or dataset_config); it says which images to cache")
    simple = {f.name for f in fields(CachingConfig)} - {"caption_randomisers", "items", "skipped", "notices"}
    config = CachingConfig(**{name: getattr(args, name) for name in simple if getattr(args, name, None) is not None})
    specs = dataset_specs(args)
    config.flip_aug = args.flip_aug or any(s.flip_aug for spec in specs for s in spec.subsets)
    config.alpha_mask = args.alpha_mask or any(s.alpha_mask for spec in specs for s in spec.subsets)
    config.items = build_items(specs, config.skipped, config.notices)
    config.caption_randomisers = caption_changers(args, [s for spec in specs for s in spec.subsets])
    return config
