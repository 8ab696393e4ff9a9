"""Reading and writing LoRA files.

Saving: casts to the save precision, adds sshs_model_hash / sshs_legacy_hash, writes atomically,
and says which consumers cannot read the file (LoHa/LoKr/Tucker: not diffusers; DoRA: who
reproduces which variant). Loading: reads tensors and metadata, and normalises every key to the canonical
names of a concrete model (library.lora.naming); keys that name nothing in the model are an error
that lists them, never silently dropped.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from library.errors import UserError
from library.file_io import save_safetensors_atomic
from library.lora.metadata import compute_hashes
from library.precisions import dtype_for
from library.lora.naming import CANONICAL_PREFIXES, ModelNames, split_key

def save_dtype(save_precision: str | None) -> torch.dtype | None:
    """--save_precision (float, fp16, bf16; None keeps the training dtype) -> torch dtype."""
    return None if save_precision is None else dtype_for(save_precision, "save_precision", ("float", "fp32", "fp16", "bf16"))


def output_file_name(output_name: str, epoch: int | None = None, step: int | None = None,
                     ext: str = ".safetensors") -> str:
    """`name.safetensors` (final), `name-000001.safetensors` (epoch), `name-step00000500.safetensors`."""
    if epoch is not None and step is not None:
        raise ValueError("give an epoch or a step, not both")
    if epoch is not None:
        return f"{output_name}-{epoch:06d}{ext}"
    if step is not None:
        return f"{output_name}-step{step:08d}{ext}"
    return f"{output_name}{ext}"


TUCKER_LOKR_NOTE = ("LoKr with Tucker conv factors (lokr_t2, use_tucker): A1111/Forge, LyCORIS and this toolkit apply "
                    "them, ComfyUI does not (its torch.kron fails on the Tucker product: it logs 'ERROR lokr' and skips "
                    "those conv modules); train without use_tucker for a file ComfyUI applies in full")


def consumer_warnings(state_dict: dict) -> list[str]:
    """One line per format feature some LoRA consumers cannot load (DESIGN.md 4.1)."""
    suffixes = {split_key(k)[1] for k in state_dict}
    notes = []
    if any(s.startswith("hada_") for s in suffixes):
        notes.append("LoHa (hada_*) loads in ComfyUI and A1111/Forge, not in diffusers")
    if any(s.startswith("lokr_") for s in suffixes):
        notes.append("LoKr (lokr_*) loads in ComfyUI and A1111/Forge, not in diffusers")
    if "lokr_t2" in suffixes:
        notes.append(TUCKER_LOKR_NOTE)
    if "lora_mid.weight" in suffixes:
        notes.append("Tucker lora_mid loads in ComfyUI and A1111/Forge, not in diffusers")
    dora = [v for k, v in state_dict.items() if split_key(k)[1] == "dora_scale"]
    if dora:
        notes.append(_dora_note(dora))
    if "diff" in suffixes:
        notes.append("full-weight diff keys load in ComfyUI, not in A1111 or diffusers")
    return notes


def _dora_note(scales: list) -> str:
    """Who reproduces this DoRA file: it depends on the axis of its magnitudes (dora_scale)."""
    per_output = any(t.dim() >= 2 and t.shape[0] > 1 and all(d == 1 for d in t.shape[1:]) for t in scales)
    if not per_output:  # [1, in, ...]: LyCORIS wd_on_output = False, this toolkit's default
        return ("DoRA (dora_scale per input channel, wd_on_output = False): ComfyUI, A1111/Forge and this toolkit "
                "reproduce it, and LyCORIS' forward pass does (LyCORIS 4.1.3's create_network_from_weights cannot "
                "rebuild it; this toolkit's loader can); diffusers drops dora_scale")
    return ("DoRA with wd_on_output = True (dora_scale per output channel): only LyCORIS and this toolkit reproduce "
            "it; ComfyUI divides by the base weight's norm instead of the adapted weight's and A1111/Forge normalise "
            "per input channel, so both give other weights; diffusers drops dora_scale. Train with "
            "wd_on_output = False (the default here) for a file the UIs reproduce")


def cast_state_dict(state_dict: dict, dtype: torch.dtype | None) -> dict:
    out = {}
    for key, value in state_dict.items():
        value = value.detach().to("cpu")
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        out[key] = value.contiguous()
    return out


def save_lora(path: str | os.PathLike, state_dict: dict, metadata: dict | None = None,
              dtype: torch.dtype | None = None, log=print) -> dict:
    """Write a LoRA file atomically with hashes in its metadata; returns the metadata written."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise UserError(f"{path}: LoRA files are written as .safetensors")
    if not state_dict:
        raise ValueError(f"{path}: refusing to write a LoRA file without tensors")
    bad = sorted(k for k in state_dict if not k.startswith(CANONICAL_PREFIXES))
    if bad:  # an internal naming bug must never reach a user's file
        raise ValueError(f"refusing to write non-canonical LoRA keys, e.g. {bad[:5]}")
    tensors = cast_state_dict(state_dict, dtype)
    metadata = {k: str(v) for k, v in (metadata or {}).items()}
    metadata["sshs_model_hash"], metadata["sshs_legacy_hash"] = compute_hashes(tensors, metadata)
    for note in consumer_warnings(tensors):
        log(f"note: {path.name}: {note}")
    save_safetensors_atomic(tensors, path, metadata)
    return metadata


def read_lora(path: str | os.PathLike) -> tuple[dict, dict]:
    """(tensors, metadata) of a .safetensors LoRA file; UserError if it is missing or unreadable."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: LoRA file not found")
    if path.suffix != ".safetensors":
        raise UserError(f"{path}: only .safetensors LoRA files are read")
    try:
        with safe_open(str(path), framework="pt") as handle:
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
            metadata = handle.metadata() or {}
    except Exception as error:  # safetensors raises several types for corrupt files
        raise UserError(f"{path}: not a readable safetensors file ({error})") from None
    return tensors, metadata


def normalise_for_model(state_dict: dict, names: ModelNames, source="LoRA") -> dict:
    """Canonical keys for `names`' model; UserError listing every key that cannot be mapped."""
    normalised, unmapped = names.normalise(state_dict)
    if unmapped:
        shown = ", ".join(unmapped[:20]) + (f", ... ({len(unmapped)} in all)" if len(unmapped) > 20 else "")
        raise UserError(f"{source}: {len(unmapped)} keys do not match any module of this SDXL model "
                        f"(or repeat a module in another naming style): {shown}")
    return normalised


def load_lora_for_model(path_or_state_dict, names: ModelNames) -> tuple[dict, dict]:
    """(normalised tensors, metadata) of a file or an in-memory state dict."""
    if isinstance(path_or_state_dict, dict):
        return normalise_for_model(path_or_state_dict, names), {}
    tensors, metadata = read_lora(path_or_state_dict)
    return normalise_for_model(tensors, names, str(path_or_state_dict)), metadata
