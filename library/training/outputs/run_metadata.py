"""kohya's `ss_*` training metadata for a LoRA file, key for key and in kohya's value formats.

train_network.py (kohya sd-scripts) builds one dict at the start of training and stringifies every
value with Python's str(): None is "None", booleans "True"/"False", tuples "(1024, 1024)"; JSON
only where kohya uses json.dumps (ss_network_args, ss_datasets, ss_tag_frequency, ss_dataset_dirs,
ss_reg_dataset_dirs, ss_bucket_info). With `dataset_config` the dataset keys are ss_datasets /
ss_tag_frequency / ss_dataset_dirs; without it the flat ss_batch_size_per_device ... ss_bucket_info.
ss_steps, ss_epoch and ss_training_finished_at are set at each save. UIs and model sites (A1111's
metadata viewer, Civitai) read these keys, so the formats are kohya's even where they are odd.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np

from library.data.buckets import BucketManager
from library.lora.metadata import BASE_MODEL_VERSION, legacy_model_hash, model_file_sha256
from library.training.inputs.batch_plan import expanded_indices
from library.training.optim.optimizer_classes import class_for, parse_kwargs

_REPO = Path(__file__).resolve().parents[3]


def _commit_hash() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "HEAD"], cwd=_REPO, stderr=subprocess.DEVNULL).decode("ascii").strip()
    except (OSError, subprocess.CalledProcessError):
        return "(unknown)"


def optimizer_description(args, optimizer) -> str:
    """kohya's ss_optimizer: `module.Class` plus `(key=value,...)` of the optimizer arguments."""
    cls = type(optimizer)
    try:
        defaults = class_for(args.optimizer_type or "AdamW")[1]
    except Exception:  # noqa: BLE001 - a description must never stop a save
        defaults = {}
    kwargs = {**parse_kwargs(args.optimizer_args, "optimizer_args"), **defaults}
    text = ",".join(f"{key}={value}" for key, value in kwargs.items())
    return f"{cls.__module__}.{cls.__name__}" + (f"({text})" if text else "")


def _network_args(args) -> dict | None:
    """kohya's net_kwargs: the "key=value" network_args as strings, plus the dropout it passes on."""
    if not args.network_args:
        return None
    kwargs = dict(item.split("=", 1) for item in args.network_args)
    kwargs.setdefault("dropout", args.network_dropout)
    return kwargs


def _tag_frequency(items) -> dict:
    """{folder or metadata file name: {tag: count}}: tags split at "," and lower-cased, from the raw
    captions (DreamBooth: caption or class tokens) or the metadata's tags (fine-tuning), as kohya."""
    frequency: dict[str, Counter] = {}
    for item in items:
        subset = item.subset
        if subset.metadata_file:
            name, text = Path(subset.metadata_file).name, item.tags or ""
        else:
            name, text = Path(subset.image_dir).name, item.caption
        counter = frequency.setdefault(name, Counter())
        counter.update(tag.strip().lower() for tag in text.split(",") if tag.strip())
    return {name: dict(counter) for name, counter in frequency.items()}


def _bucket_info(spec, items) -> dict | None:
    """kohya's bucket_info: {"buckets": {index: {"resolution": [w, h], "count": n}}, "mean_img_ar_error": e};
    counts include repeats (and the regularisation balance), the index is the bucket's position in
    the sorted bucket list, the error is the mean |bucket ratio - image ratio| over the images."""
    if not spec.enable_bucket:
        return None
    counts = Counter(items[i].bucket for i in expanded_indices(items))
    if spec.bucket_no_upscale:
        resolutions = sorted(counts)
    else:
        manager = BucketManager(False, spec.resolution, spec.min_bucket_reso, spec.max_bucket_reso, spec.bucket_reso_steps)
        resolutions = sorted(manager.resolutions)
    buckets = {index: {"resolution": list(reso), "count": counts[reso]} for index, reso in enumerate(resolutions) if counts[reso]}
    errors = [abs(item.placement.ar_error) for item in items]
    return {"buckets": buckets, "mean_img_ar_error": float(np.mean(errors)) if errors else 0}


def _subset_counts(items) -> Counter:
    """Images per subset (kohya's img_count, without repeats), keyed by id(subset)."""
    return Counter(id(item.subset) for item in items)


def _dataset_dirs(subsets, counts, reg: bool | None = False) -> dict:
    """{dir or metadata file: {"n_repeats", "img_count"}} of the (regularisation) subsets."""
    info = {}
    for subset in subsets:
        if reg is not None and subset.is_reg != reg:
            continue
        name = Path(subset.metadata_file).name if subset.metadata_file else Path(subset.image_dir).name
        info[name] = {"n_repeats": subset.num_repeats, "img_count": counts[id(subset)]}
    return info


def _images_with_repeats(subsets, counts, reg: bool) -> int:
    return sum(s.num_repeats * counts[id(s)] for s in subsets if s.is_reg == reg)


def _datasets_metadata(args, specs, items) -> dict:
    """ss_datasets / ss_tag_frequency / ss_dataset_dirs, as kohya writes them with dataset_config."""
    counts = _subset_counts(items)
    datasets, tag_frequency, dirs = [], {}, {}
    for index, spec in enumerate(specs):
        own = [item for item in items if item.dataset_index == index]
        dreambooth = not any(s.metadata_file for s in spec.subsets)
        frequency = _tag_frequency(own)
        entry = {
            "is_dreambooth": dreambooth,
            "batch_size_per_device": spec.batch_size,
            "num_train_images": _images_with_repeats(spec.subsets, counts, False),
            "num_reg_images": _images_with_repeats(spec.subsets, counts, True),
            "resolution": list(spec.resolution),
            "enable_bucket": bool(spec.enable_bucket),
            "min_bucket_reso": spec.min_bucket_reso if spec.enable_bucket else None,
            "max_bucket_reso": spec.max_bucket_reso if spec.enable_bucket else None,
            "tag_frequency": frequency,
            "bucket_info": _bucket_info(spec, own),
            "resize_interpolation": getattr(args, "resize_interpolation", None),
        }
        subsets = []
        for subset in spec.subsets:
            meta = {
                "img_count": counts[id(subset)], "num_repeats": subset.num_repeats, "color_aug": bool(subset.color_aug),
                "flip_aug": bool(subset.flip_aug), "random_crop": bool(subset.random_crop),
                "shuffle_caption": bool(subset.shuffle_caption), "keep_tokens": subset.keep_tokens,
                "keep_tokens_separator": subset.keep_tokens_separator, "secondary_separator": subset.secondary_separator,
                "enable_wildcard": bool(subset.enable_wildcard), "caption_prefix": subset.caption_prefix,
                "caption_suffix": subset.caption_suffix, "resize_interpolation": subset.resize_interpolation,
            }
            name = None
            if subset.image_dir:
                meta["image_dir"] = name = Path(subset.image_dir).name
            if dreambooth:
                meta["class_tokens"], meta["is_reg"] = subset.class_tokens, subset.is_reg
                name = None if subset.is_reg else name
            else:
                meta["metadata_file"] = name = Path(subset.metadata_file).name
            subsets.append(meta)
            if name is not None:  # a folder used twice is listed as "name (2)"
                unique, number = name, 2
                while unique in dirs:
                    unique, number = f"{name} ({number})", number + 1
                dirs[unique] = {"n_repeats": subset.num_repeats, "img_count": counts[id(subset)]}
        entry["subsets"] = subsets
        datasets.append(entry)
        for folder, tags in frequency.items():
            tag_frequency.setdefault(folder, tags)
    return {"ss_datasets": json.dumps(datasets), "ss_tag_frequency": json.dumps(tag_frequency),
            "ss_dataset_dirs": json.dumps(dirs)}


def _flat_dataset_metadata(args, spec, items, total_batch_size: int) -> dict:
    """The keys kohya writes for a dataset from train_data_dir / reg_data_dir / in_json."""
    counts = _subset_counts(items)
    return {
        "ss_batch_size_per_device": args.train_batch_size,
        "ss_total_batch_size": total_batch_size,
        "ss_resolution": tuple(args.resolution) if args.resolution else args.resolution,
        "ss_color_aug": bool(args.color_aug),
        "ss_flip_aug": bool(args.flip_aug),
        "ss_random_crop": bool(args.random_crop),
        "ss_shuffle_caption": bool(args.shuffle_caption),
        "ss_enable_bucket": bool(spec.enable_bucket),
        "ss_bucket_no_upscale": bool(spec.enable_bucket and spec.bucket_no_upscale),
        "ss_min_bucket_reso": spec.min_bucket_reso if spec.enable_bucket else None,
        "ss_max_bucket_reso": spec.max_bucket_reso if spec.enable_bucket else None,
        "ss_keep_tokens": args.keep_tokens,
        "ss_dataset_dirs": json.dumps(_dataset_dirs(spec.subsets, counts, reg=False)),
        "ss_reg_dataset_dirs": json.dumps(_dataset_dirs(spec.subsets, counts, reg=True)),
        "ss_tag_frequency": json.dumps(_tag_frequency(items)),
        "ss_bucket_info": json.dumps(_bucket_info(spec, items)),
    }


def _model_keys(prefix: str, path: str | None) -> dict:
    """ss_<prefix>_hash (A1111's old 8-digit hash), ss_new_<prefix>_hash (SHA-256 of the file) and
    ss_<prefix>_name, as kohya: hashes only for a path that exists, the name without its folder."""
    if path is None:
        return {}
    out = {}
    if os.path.exists(path):
        out[f"ss_{prefix}_hash"] = legacy_model_hash(path)
        out[f"ss_new_{prefix}_hash"] = model_file_sha256(path)
        path = os.path.basename(path)
    out[f"ss_{prefix}_name"] = path
    return out


def kohya_run_metadata(args, *, items, val_items, specs, optimizer, batches_per_epoch: int, max_steps: int,
                       epochs: int, total_batch_size: int, started_at: float, seed: int | None = None) -> dict[str, str]:
    """Every ss_* key kohya's train_network.py writes for SDXL at the start of a run (as strings)."""
    counts = _subset_counts(items)
    subsets = [s for spec in specs for s in spec.subsets]
    meta = {
        "ss_session_id": random.SystemRandom().randint(0, 2**32),
        "ss_training_started_at": started_at,
        "ss_output_name": args.output_name,
        "ss_learning_rate": args.learning_rate,
        "ss_text_encoder_lr": args.text_encoder_lr,
        "ss_unet_lr": args.unet_lr,
        "ss_num_train_images": _images_with_repeats(subsets, counts, False),
        "ss_num_validation_images": len(val_items),  # kohya's validation set has no repeats
        "ss_num_reg_images": _images_with_repeats(subsets, counts, True),
        "ss_num_batches_per_epoch": batches_per_epoch,
        "ss_num_epochs": epochs,
        "ss_gradient_checkpointing": args.gradient_checkpointing,
        "ss_gradient_accumulation_steps": args.gradient_accumulation_steps,
        "ss_max_train_steps": max_steps,
        "ss_lr_warmup_steps": args.lr_warmup_steps,
        "ss_lr_scheduler": args.lr_scheduler,
        "ss_network_module": args.network_module,
        "ss_network_dim": args.network_dim,
        "ss_network_alpha": args.network_alpha,
        "ss_network_dropout": args.network_dropout,
        "ss_mixed_precision": args.mixed_precision,
        "ss_full_fp16": bool(args.full_fp16),
        "ss_v2": False,
        "ss_base_model_version": BASE_MODEL_VERSION,
        "ss_clip_skip": args.clip_skip,
        "ss_max_token_length": args.max_token_length,
        "ss_cache_latents": bool(args.cache_latents or args.cache_latents_to_disk),
        "ss_seed": seed if seed is not None else args.seed,  # the seed the run used (drawn when none was given)
        "ss_lowram": args.lowram,
        "ss_noise_offset": args.noise_offset,
        "ss_multires_noise_iterations": args.multires_noise_iterations,
        "ss_multires_noise_discount": args.multires_noise_discount,
        "ss_adaptive_noise_scale": args.adaptive_noise_scale,
        "ss_zero_terminal_snr": args.zero_terminal_snr,
        "ss_training_comment": args.training_comment,
        "ss_sd_scripts_commit_hash": _commit_hash(),
        "ss_optimizer": optimizer_description(args, optimizer),
        "ss_max_grad_norm": args.max_grad_norm,
        "ss_caption_dropout_rate": args.caption_dropout_rate,
        "ss_caption_dropout_every_n_epochs": args.caption_dropout_every_n_epochs,
        "ss_caption_tag_dropout_rate": args.caption_tag_dropout_rate,
        "ss_face_crop_aug_range": args.face_crop_aug_range,
        "ss_prior_loss_weight": args.prior_loss_weight,
        "ss_min_snr_gamma": args.min_snr_gamma,
        "ss_scale_weight_norms": args.scale_weight_norms,
        "ss_ip_noise_gamma": args.ip_noise_gamma,
        "ss_debiased_estimation": bool(args.debiased_estimation_loss),
        "ss_noise_offset_random_strength": args.noise_offset_random_strength,
        "ss_ip_noise_gamma_random_strength": args.ip_noise_gamma_random_strength,
        "ss_loss_type": args.loss_type,
        "ss_huber_schedule": args.huber_schedule,
        "ss_huber_scale": args.huber_scale,
        "ss_huber_c": args.huber_c,
        "ss_fp8_base": bool(args.fp8_base),
        "ss_fp8_base_unet": bool(args.fp8_base_unet),
        "ss_validation_seed": args.validation_seed,
        "ss_validation_split": args.validation_split,
        "ss_max_validation_steps": args.max_validation_steps,
        "ss_validate_every_n_epochs": args.validate_every_n_epochs,
        "ss_validate_every_n_steps": args.validate_every_n_steps,
        "ss_resize_interpolation": args.resize_interpolation,
    }
    if args.dataset_config:
        meta.update(_datasets_metadata(args, specs, items))
    else:
        meta.update(_flat_dataset_metadata(args, specs[0], items, total_batch_size))
    network_args = _network_args(args)
    if network_args is not None:
        meta["ss_network_args"] = json.dumps(network_args)
    meta.update(_model_keys("sd_model", args.pretrained_model_name_or_path))
    meta.update(_model_keys("vae", args.vae))
    return {key: str(value) for key, value in meta.items()}
