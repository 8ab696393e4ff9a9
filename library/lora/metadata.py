"""Metadata written into LoRA files: kohya's ss_* keys, the sshs hashes, and ModelSpec 1.0.1.

All values are strings (safetensors metadata is str -> str). The hashes are the ones A1111's
additional-networks extension and kohya compute:
  sshs_model_hash   SHA-256 of the tensor payload, i.e. of every byte after the 8-byte header
                    length and the JSON header, so editing metadata never changes it;
  sshs_legacy_hash  first 8 hex digits of SHA-256 over 64 KiB at offset 1 MiB of the file as
                    serialised with only its ss_* metadata (kohya's definition).
"""
from __future__ import annotations

import datetime
import hashlib
import io
import json
import os

import torch

BASE_MODEL_VERSION = "sdxl_base_v1-0"
MODELSPEC_VERSION = "1.0.1"
MODELSPEC_ARCHITECTURE_LORA = "stable-diffusion-xl-v1-base/lora"
MODELSPEC_IMPLEMENTATION = "https://github.com/Stability-AI/generative-models"
_BLOCK = 1 << 20


# One metadata value can be huge (a 50 MB header was seen in the wild: an embedded dataset or image).
PRINT_LIMIT = 2000  # characters of one value that tools print
COPY_LIMIT = 1 << 20  # bytes of one value that tools copy into a file they derive


def value_bytes(value: str) -> int:
    return len(value.encode("utf-8"))


def shorten(value: str, limit: int = PRINT_LIMIT) -> str:
    """`value`, or its first `limit` characters followed by "... (N bytes)"."""
    if len(value) <= limit:
        return value
    return f"{value[:limit]}... ({value_bytes(value):,} bytes)"


def cut_large_values(metadata: dict, notices: list | None = None) -> dict:
    """A copy of `metadata` whose values above COPY_LIMIT bytes are shortened (and named in `notices`)."""
    out = {}
    for key, value in metadata.items():
        if isinstance(value, str) and value_bytes(value) > COPY_LIMIT:
            if notices is not None:
                notices.append(f"metadata {key} ({value_bytes(value):,} bytes) is cut to its first {PRINT_LIMIT:,} characters "
                               "in the new file")
            value = shorten(value)
        out[key] = value
    return out


def _payload_hash(stream: io.BufferedIOBase) -> str:
    header_len = int.from_bytes(stream.read(8), "little")
    stream.seek(8 + header_len)
    sha = hashlib.sha256()
    for chunk in iter(lambda: stream.read(_BLOCK), b""):
        sha.update(chunk)
    return sha.hexdigest()


def model_hash_of_file(path: str | os.PathLike) -> str:
    """sshs_model_hash of a safetensors file on disk."""
    with open(path, "rb") as stream:
        return _payload_hash(stream)


def legacy_model_hash(path: str | os.PathLike) -> str:
    """kohya's model_hash (A1111's old checkpoint hash): the first 8 hex digits of SHA-256 over the
    64 KiB at offset 1 MiB; "IsADirectory" for a folder (a diffusers model), as kohya writes it."""
    if os.path.isdir(path):
        return "IsADirectory"
    with open(path, "rb") as stream:
        stream.seek(0x100000)
        return hashlib.sha256(stream.read(0x10000)).hexdigest()[:8]


def model_file_sha256(path: str | os.PathLike) -> str:
    """kohya's calculate_sha256 (A1111's new checkpoint hash): SHA-256 of the whole file;
    "IsADirectory" for a folder. A multi-GB checkpoint takes some seconds: computed once per run."""
    if os.path.isdir(path):
        return "IsADirectory"
    sha = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(_BLOCK), b""):
            sha.update(chunk)
    return sha.hexdigest()


def compute_hashes(tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> tuple[str, str]:
    """(sshs_model_hash, sshs_legacy_hash) of the file these tensors will make.

    The payload does not depend on the metadata, so the model hash computed here is the hash of
    the file that is finally written, whatever metadata it carries.
    """
    from safetensors.torch import save

    ss_only = {k: v for k, v in (metadata or {}).items() if k.startswith("ss_")}
    data = save({k: v.contiguous() for k, v in tensors.items()}, metadata=ss_only or None)
    model_hash = _payload_hash(io.BytesIO(data))
    legacy_hash = hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    return model_hash, legacy_hash


def _str(value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def build_training_metadata(
    *,
    network_module: str,
    network_dim: int | None,
    network_alpha: float | None,
    network_args: dict | None = None,
    output_name: str = "",
    learning_rate: float | None = None,
    unet_lr: float | None = None,
    text_encoder_lr=None,
    optimizer: str = "",
    steps: int = 0,
    epoch: int = 0,
    num_train_images: int = 0,
    resolution=(1024, 1024),
    seed: int | None = None,
    tag_frequency: dict | None = None,
    training_comment: str | None = None,
    extra: dict | None = None,
) -> dict[str, str]:
    """The ss_* keys kohya writes (values as strings); `extra` adds or overrides any ss_* key."""
    meta = {
        "ss_network_module": network_module,
        "ss_network_dim": network_dim,
        "ss_network_alpha": network_alpha,
        "ss_network_args": network_args or {},
        "ss_base_model_version": BASE_MODEL_VERSION,
        "ss_sd_model_name": "",
        "ss_v2": False,
        "ss_output_name": output_name,
        "ss_learning_rate": learning_rate,
        "ss_unet_lr": unet_lr,
        "ss_text_encoder_lr": text_encoder_lr,
        "ss_optimizer": optimizer,
        "ss_steps": steps,
        "ss_epoch": epoch,
        "ss_num_train_images": num_train_images,
        "ss_resolution": f"({resolution[0]}, {resolution[1]})",
        "ss_seed": seed,
        "ss_tag_frequency": tag_frequency or {},
        "ss_training_comment": training_comment,
    }
    meta.update(extra or {})
    return {k: _str(v) for k, v in meta.items() if v is not None}


def build_modelspec(
    *,
    title: str,
    resolution=(1024, 1024),
    date: datetime.datetime | None = None,
    trigger_phrase: str | None = None,
    description: str | None = None,
    author: str | None = None,
    license: str | None = None,
    tags: str | None = None,
    usage_hint: str | None = None,
    architecture: str = MODELSPEC_ARCHITECTURE_LORA,
    merged_from: str | None = None,
    preprocessor: str | None = None,
    is_negative_embedding: str | None = None,
) -> dict[str, str]:
    """ModelSpec 1.0.1 keys for an SDXL LoRA; optional keys are left out when not given."""
    date = date or datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    spec = {
        "modelspec.sai_model_spec": MODELSPEC_VERSION,
        "modelspec.architecture": architecture,
        "modelspec.implementation": MODELSPEC_IMPLEMENTATION,
        "modelspec.title": title,
        "modelspec.date": date.isoformat(),
        "modelspec.resolution": f"{resolution[0]}x{resolution[1]}",
        "modelspec.prediction_type": "epsilon",
        "modelspec.trigger_phrase": trigger_phrase,
        "modelspec.description": description,
        "modelspec.author": author,
        "modelspec.license": license,
        "modelspec.tags": tags,
        "modelspec.usage_hint": usage_hint,
        "modelspec.merged_from": merged_from,
        "modelspec.preprocessor": preprocessor,
        "modelspec.is_negative_embedding": is_negative_embedding,
    }
    return {k: v for k, v in spec.items() if v}
