"""Reading weight files safely: validated safetensors headers, and `.ckpt` pickles only as weights.

A truncated download, a renamed text file or a pickle with code in it each gets a one-line error
naming the file and what to do, before any model is built.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import torch

from library.errors import UserError

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
_MAX_HEADER_BYTES = 100 * 1024 * 1024


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise UserError(f"{path}: file not found; check the path (relative paths are relative to {Path.cwd()})")
    if path.is_dir():
        raise UserError(f"{path}: is a folder, expected a weights file")


def read_safetensors_header(path: str | os.PathLike) -> tuple[dict, dict]:
    """Return (tensor entries, metadata) of a safetensors file after checking it is complete."""
    path = Path(path)
    _check_exists(path)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise UserError(f"{path}: not a safetensors file (only {size} bytes)")
        (header_len,) = struct.unpack("<Q", head)
        if header_len <= 1 or header_len > min(_MAX_HEADER_BYTES, size - 8):
            raise UserError(f"{path}: not a safetensors file (invalid header); is it a .ckpt or a partial download?")
        try:
            header = json.loads(handle.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise UserError(f"{path}: not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise UserError(f"{path}: not a safetensors file (header is not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    data_end = max((entry["data_offsets"][1] for entry in header.values()), default=0)
    expected = 8 + header_len + data_end
    if size < expected:
        raise UserError(
            f"{path}: file is truncated ({size:,} of {expected:,} bytes); download or copy it again"
        )
    return header, metadata


def read_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Key -> shape of every tensor, without loading tensor data (safetensors only)."""
    header, _ = read_safetensors_header(path)
    return {key: tuple(entry["shape"]) for key, entry in header.items()}


def load_weights(path: str | os.PathLike, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Load a state dict from .safetensors, or from a pickle with torch.load(weights_only=True)."""
    path = Path(path)
    _check_exists(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return _load_pickle(path, device)
    read_safetensors_header(path)
    from safetensors.torch import load_file

    return load_file(str(path), device=device)


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    return read_safetensors_header(path)[1]


def _load_pickle(path: Path, device: str) -> dict[str, torch.Tensor]:
    try:
        data = torch.load(str(path), map_location=device, weights_only=True)
    except Exception as error:  # torch raises many types for bad pickles
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(
            f"{path}: cannot be read as a weights-only checkpoint ({first_line}); "
            "convert it to .safetensors with a tool you trust"
        ) from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise UserError(f"{path}: does not contain a state dict")
    return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
