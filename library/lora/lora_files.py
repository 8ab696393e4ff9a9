"""LoRA files as the file tools see them: key groups by canonical module name, checked, no model.

`read_groups(path)` reads a file, refuses anything that is not a LoRA-family file with a one-line
reason (a checkpoint, an embedding file, an unknown key family), normalises module names to the
canonical `lora_unet_<SAI path>` / `lora_te{1,2}_text_model_...` (`lora_te2_text_projection`) spelling and returns
{module name: {suffix: tensor}}. Files already in canonical spelling need no model; other
spellings (diffusers UNet names, PEFT keys, TE names without `text_model_`) are mapped through an
empty (meta-device) SDXL model, built only when needed.

Also here: the guard against overwriting inputs, the DoRA refusal for linear-only operations, and
the metadata a tool writes (hashes dropped for recomputation, the operation noted).
"""
from __future__ import annotations

import datetime
import json
import os
import re
from functools import lru_cache
from pathlib import Path

from library.errors import UserError
from library.lora import weights_math
from library.lora.file_io import read_lora
from library.lora.metadata import cut_large_values
from library.lora.naming import group_by_module, normalise_suffix, split_key

_CANONICAL_NAME = re.compile(
    r"^(lora_unet_(input_blocks|middle_block|output_blocks|time_embed|label_emb|out)_"
    r"|lora_te[12]_text_model_(?!text_projection$)|lora_te2_text_projection$)")
_FAMILY_SUFFIXES = ("lora_down", "lora_up", "lora_A", "lora_B", "lora.down", "lora.up", "hada_", "lokr_",
                    "diff")
HISTORY_KEY = "ss_lora_tools_history"


def _looks_like(tensors: dict) -> str:
    keys = list(tensors)
    if any(k.startswith(("model.diffusion_model.", "conditioner.", "first_stage_model.")) for k in keys):
        return "it looks like a model checkpoint"
    if {"clip_l", "clip_g", "emb_params"} & set(keys) or any(k.startswith("string_to_param") for k in keys):
        return "it looks like a textual-inversion / pivotal embedding file"
    return f"first keys: {', '.join(keys[:3])}"


def is_lora_key(key: str) -> bool:
    _, suffix = split_key(key)
    return suffix == "alpha" or suffix == "dora_scale" or suffix.startswith(_FAMILY_SUFFIXES) \
        or ".lora_" in key or key.endswith(("lora_A.weight", "lora_B.weight"))


@lru_cache(maxsize=1)
def _reference_names():
    """ModelNames of an empty full-size SDXL (a superset of the tiny model's names)."""
    from library.lora.naming import ModelNames
    from library.models.model_build import empty_text_encoder, empty_unet
    from library.models.sdxl_architecture import SDXL_TE1_CONFIG, SDXL_TE2_CONFIG, SDXL_UNET_CONFIG

    return ModelNames(empty_unet(SDXL_UNET_CONFIG), [empty_text_encoder(SDXL_TE1_CONFIG, False),
                                                     empty_text_encoder(SDXL_TE2_CONFIG, True)])


def normalise_names(tensors: dict, source) -> dict:
    """Canonical keys for an SDXL LoRA state dict, without a concrete model when possible."""
    out, foreign = {}, {}
    for key, value in tensors.items():
        name, suffix = split_key(key)
        if _CANONICAL_NAME.match(name) and suffix:
            out[f"{name}.{normalise_suffix(suffix)}"] = value
        else:
            foreign[key] = value
    if foreign:
        names = _reference_names()
        mapped, unmapped = names.normalise(foreign)
        if unmapped:
            shown = ", ".join(unmapped[:8]) + (f", ... ({len(unmapped)} in all)" if len(unmapped) > 8 else "")
            raise UserError(f"{source}: {len(unmapped)} keys name no SDXL module (is it an SD1.x/SD2 LoRA?): {shown}")
        clash = sorted(set(mapped) & set(out))
        if clash:
            raise UserError(f"{source}: the file names module {clash[0].split('.')[0]} in two naming styles")
        out.update(mapped)
    return out


def read_groups(path: str | os.PathLike) -> tuple[dict, dict]:
    """({canonical module name: {suffix: tensor}}, metadata); UserError if the file is not a LoRA."""
    tensors, metadata = read_lora(path)
    if not tensors or not any(is_lora_key(k) for k in tensors):
        detail = _looks_like(tensors) if tensors else "it has no tensors"
        raise UserError(f"{path}: not a LoRA file (no lora_down/lora_up, hada_* or lokr_* keys; {detail})")
    groups = group_by_module(normalise_names(tensors, path))
    for name, group in groups.items():
        try:
            weights_math.detect_algo(group)
        except weights_math.UnsupportedGroupError as error:
            raise UserError(f"{path}: module {name}: {error}") from None
    return groups, metadata


def algo_of(group: dict) -> str:
    """'lora', 'loha', 'lokr' or 'full', with '+dora' when the group carries dora_scale."""
    algo = weights_math.detect_algo(group)
    return algo + ("+dora" if weights_math.is_dora(group) else "")


def refuse_dora(groups: dict, source, operation: str) -> None:
    """DoRA is W' = m (W + dW) / ||W + dW||: it needs the base weight and is not linear in the file."""
    dora = [name for name, group in groups.items() if weights_math.is_dora(group)]
    if dora:
        raise UserError(
            f"{source}: DoRA file ({len(dora)} modules with dora_scale, e.g. {dora[0]}): {operation} is a "
            "linear operation on the delta weights, but DoRA rescales the merged weight by the norm of "
            "W + dW, which needs the base model and is not linear; merge it into a checkpoint with "
            "networks/sdxl_merge_lora.py --sd_model instead")


def refuse_overwriting_inputs(output: str | os.PathLike, inputs) -> None:
    """UserError if `output` is one of the input paths (same file, however spelt)."""
    out = Path(output).resolve()
    for item in inputs:
        if item is not None and Path(item).resolve() == out:
            raise UserError(f"{output}: the output would overwrite an input file; choose another --save_to")


def require_safetensors_output(path: str | os.PathLike) -> None:
    if Path(path).suffix != ".safetensors":
        raise UserError(f"{path}: LoRA files are written as .safetensors; use that extension for --save_to")


def derived_metadata(metadata: dict, operation: str, details: dict | None = None, **ss_updates) -> dict:
    """Metadata for a file derived from `metadata`: hashes dropped (save_lora recomputes them),
    ss_* updates applied, and the operation appended to ss_lora_tools_history (a JSON list) and
    to ss_training_comment."""
    notices: list[str] = []
    out = {k: v for k, v in cut_large_values(metadata or {}, notices).items() if not k.startswith("sshs_")}
    for notice in notices:
        print(f"notice: {notice}")
    for key, value in ss_updates.items():
        if value is not None:
            out[key] = value if isinstance(value, str) else json.dumps(value) if isinstance(value, (dict, list)) \
                else str(value)
    try:
        history = json.loads(out.get(HISTORY_KEY, "[]"))
        if not isinstance(history, list):
            history = []
    except json.JSONDecodeError:
        history = []
    entry = {"operation": operation,
             "date": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()}
    entry.update(details or {})
    history.append(entry)
    out[HISTORY_KEY] = json.dumps(history, ensure_ascii=False)
    note = operation + (" (" + ", ".join(f"{k}={v}" for k, v in (details or {}).items()) + ")" if details else "")
    previous = out.get("ss_training_comment")
    out["ss_training_comment"] = f"{previous}; {note}" if previous and previous != "None" else note
    return out


def ranks_summary(ranks) -> str:
    """One rank -> "8"; several -> "Dynamic" (what kohya writes to ss_network_dim then)."""
    ranks = set(ranks)
    return str(ranks.pop()) if len(ranks) == 1 else "Dynamic"
