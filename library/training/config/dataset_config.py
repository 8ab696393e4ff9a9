"""Dataset specification: `--dataset_config` TOML ([general] / [[datasets]] / [[datasets.subsets]])
or the training config's own dataset keys (DreamBooth folders or in_json), validated into specs.

Precedence for every option: subset > dataset > [general] > training config / command line.
DreamBooth folders are named `<repeats>_<class tokens>` (e.g. `10_catwomen`).
"""
from __future__ import annotations

import difflib
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from library.errors import UserError
from library.training.config import option_types as T
from library.data.caption_processing import CaptionOptions

# option -> (parser, default); shared by every subset
SUBSET_OPTIONS = {
    "image_dir": (T.parse_str, None),
    "num_repeats": (T.parse_int, 1),
    "is_reg": (T.parse_bool, False),
    "class_tokens": (T.parse_str, None),
    "caption_extension": (T.parse_str, ".caption"),
    "metadata_file": (T.parse_str, None),
    "shuffle_caption": (T.parse_bool, False),
    "caption_separator": (T.parse_str, ","),
    "keep_tokens": (T.parse_int, 0),
    "keep_tokens_separator": (T.parse_str, ""),
    "secondary_separator": (T.parse_str, None),
    "enable_wildcard": (T.parse_bool, False),
    "caption_prefix": (T.parse_str, None),
    "caption_suffix": (T.parse_str, None),
    "caption_dropout_rate": (T.parse_float, 0.0),
    "caption_dropout_every_n_epochs": (T.parse_int, 0),
    "caption_tag_dropout_rate": (T.parse_float, 0.0),
    "token_warmup_min": (T.parse_int, 1),
    "token_warmup_step": (T.parse_float, 0),
    "color_aug": (T.parse_bool, False),
    "flip_aug": (T.parse_bool, False),
    "face_crop_aug_range": (T.parse_float_pair, None),
    "random_crop": (T.parse_bool, False),
    "alpha_mask": (T.parse_bool, False),
    "resize_interpolation": (T.parse_str, None),
    "conditioning_data_dir": (T.parse_str, None),
    "cache_info": (T.parse_bool, False),
    "custom_attributes": (T.parse_table, None),
}
DATASET_OPTIONS = {
    "resolution": (T.parse_resolution, None),
    "batch_size": (T.parse_int, 1),
    "enable_bucket": (T.parse_bool, False),
    "min_bucket_reso": (T.parse_int, 256),
    "max_bucket_reso": (T.parse_int, 1024),
    "bucket_reso_steps": (T.parse_int, 64),
    "bucket_no_upscale": (T.parse_bool, False),
    "validation_seed": (T.parse_int, None),
    "validation_split": (T.parse_float, 0.0),
    "network_multiplier": (T.parse_float, 1.0),
}
# training-config names that feed the dataset options above
TRAINING_ALIASES = {"batch_size": "train_batch_size"}


@dataclass
class SubsetSpec(CaptionOptions):
    """A subset's images and options; its caption options are those of CaptionOptions."""

    image_dir: str | None = None
    num_repeats: int = 1
    is_reg: bool = False
    class_tokens: str | None = None
    caption_extension: str = ".caption"
    metadata_file: str | None = None
    color_aug: bool = False
    flip_aug: bool = False
    face_crop_aug_range: tuple | None = None
    random_crop: bool = False
    alpha_mask: bool = False
    resize_interpolation: str | None = None
    conditioning_data_dir: str | None = None  # loss masks for masked_loss (condition_masks.py)
    cache_info: bool = False  # metadata_cache.json of DreamBooth folders (library/data/image_info_cache.py)
    custom_attributes: dict | None = None  # kohya's per-subset attributes (diff_output_preservation)


@dataclass
class DatasetSpec:
    resolution: tuple[int, int] | None = None
    batch_size: int = 1
    enable_bucket: bool = False
    min_bucket_reso: int = 256
    max_bucket_reso: int = 1024
    bucket_reso_steps: int = 64
    bucket_no_upscale: bool = False
    validation_seed: int | None = None
    validation_split: float = 0.0
    network_multiplier: float = 1.0  # LoRA strength while training on this dataset, as kohya's dataset option
    subsets: list[SubsetSpec] = field(default_factory=list)


def _defaults_from_args(args) -> dict:
    values = {}
    for name in list(SUBSET_OPTIONS) + list(DATASET_OPTIONS):
        source = TRAINING_ALIASES.get(name, name)
        if hasattr(args, source) and getattr(args, source) is not None:
            values[name] = getattr(args, source)
    return values


def _validated(table: dict, allowed: dict, where: str) -> dict:
    out = {}
    for key, value in table.items():
        if key in ("datasets", "subsets"):
            continue
        if key not in allowed:
            close = difflib.get_close_matches(key, list(allowed), n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise UserError(f"{where} {key}: unknown dataset option{hint}")
        try:
            out[key] = allowed[key][0](value)
        except ValueError as error:
            raise UserError(f"{where} {key}: {error}") from None
    return out


def _build(cls, values: dict):
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})


def parse_dreambooth_folder(name: str) -> tuple[int, str] | None:
    """(repeats, class tokens) of a DreamBooth folder name `<repeats>_<class tokens>`, as kohya reads
    it: the text after the first underscore, kept as written (`10_ohwx_woman` -> 10, "ohwx_woman");
    None for a folder kohya ignores (no leading number, or fewer than 1 repeat).
    The one parser of these names: the trainer and the caching tools both get folders from here."""
    repeats, _, class_tokens = name.partition("_")
    if not repeats.isdecimal() or int(repeats) < 1:
        return None
    return int(repeats), class_tokens


def dreambooth_subsets(folder: str, is_reg: bool, base: dict) -> list[SubsetSpec]:
    """One subset per `<repeats>_<class tokens>` sub-folder; a clear error when there is none."""
    root = Path(folder)
    option = "reg_data_dir" if is_reg else "train_data_dir"
    if not root.is_dir():
        raise UserError(f"{root}: {option} folder not found")
    subsets, ignored = [], []
    for child in sorted(p for p in root.iterdir() if p.is_dir()):
        parsed = parse_dreambooth_folder(child.name)
        if parsed is None:
            ignored.append(child.name)
            continue
        values = {**base, "image_dir": str(child), "num_repeats": parsed[0], "is_reg": is_reg, "class_tokens": parsed[1] or None}
        subsets.append(_build(SubsetSpec, values))
    if not subsets:
        found = f"sub-folders found: {', '.join(ignored[:5])}" if ignored else "it has no sub-folders"
        raise UserError(
            f"{root}: no DreamBooth image folders in {option} ({found}); name them <repeats>_<class>, e.g. "
            f"{root}/10_catwomen, or give in_json for a fine-tune metadata dataset"
        )
    return subsets


def specs_from_args(args) -> list[DatasetSpec]:
    """Dataset specs from the training config alone (no --dataset_config)."""
    base = _defaults_from_args(args)
    if args.in_json:
        if not args.train_data_dir:
            raise UserError("in_json needs train_data_dir (the folder the metadata's image keys are relative to)")
        subset = _build(SubsetSpec, {**base, "image_dir": args.train_data_dir, "metadata_file": args.in_json,
                                     "num_repeats": args.dataset_repeats})
        return [_build(DatasetSpec, {**base, "subsets": [subset]})]
    if not args.train_data_dir:
        raise UserError("no dataset: set train_data_dir (with in_json or <repeats>_<class> folders) or dataset_config")
    subsets = dreambooth_subsets(args.train_data_dir, False, base)
    if args.reg_data_dir:
        reg_subsets = dreambooth_subsets(args.reg_data_dir, True, base)
        for subset in reg_subsets:  # the training config's mask folder is for the training images
            subset.conditioning_data_dir = None
        subsets += reg_subsets
    return [_build(DatasetSpec, {**base, "subsets": subsets})]


def specs_from_file(path: str, args) -> list[DatasetSpec]:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: dataset config not found (--dataset_config)")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"{path}: invalid TOML ({error})") from None
    unknown = set(data) - {"general", "datasets"}
    if unknown:
        raise UserError(f"{path}: [{sorted(unknown)[0]}]: unknown table; a dataset config has [general] and [[datasets]]")
    every_option = {**SUBSET_OPTIONS, **DATASET_OPTIONS}
    general = _validated(data.get("general", {}), every_option, f"{path}: [general]")
    datasets = data.get("datasets", [])
    if not datasets:
        raise UserError(f"{path}: no [[datasets]] table; add [[datasets]] with at least one [[datasets.subsets]]")
    specs = []
    for d_index, dataset in enumerate(datasets):
        where = f"{path}: [[datasets]] #{d_index + 1}"
        dataset_values = {**_defaults_from_args(args), **general, **_validated(dataset, every_option, where)}
        subsets = []
        for s_index, subset in enumerate(dataset.get("subsets", [])):
            s_where = f"{where} [[datasets.subsets]] #{s_index + 1}"
            values = {**dataset_values, **_validated(subset, SUBSET_OPTIONS, s_where)}
            if not values.get("image_dir") and not values.get("metadata_file"):
                raise UserError(f"{s_where}: needs image_dir (or metadata_file)")
            subsets.append(_build(SubsetSpec, values))
        if not subsets:
            raise UserError(f"{where}: has no [[datasets.subsets]]; add one with image_dir")
        specs.append(_build(DatasetSpec, {**dataset_values, "subsets": subsets}))
    return specs


def dataset_specs(args) -> list[DatasetSpec]:
    specs = specs_from_file(args.dataset_config, args) if args.dataset_config else specs_from_args(args)
    for spec in specs:
        if spec.resolution is None:
            raise UserError("resolution is not set; add resolution = \"1024,1024\" (SDXL) to the config")
    return specs
