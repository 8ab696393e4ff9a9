"""Reading weight files safely: validated safetensors headers, and `.ckpt` pickles only as weights.

A truncated download, a renamed text file or a pickle with code in it each gets a one-line error
naming the file and what to do, before any model is built.
"""
from __future__ import annotations

import contextlib
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
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise UserError(f"{path}: damaged safetensors header (__metadata__ must map names to strings); download or copy it again")
    data_end = _check_entries(path, header)
    expected = 8 + header_len + data_end
    if size < expected:
        raise UserError(
            f"{path}: file is truncated ({size:,} of {expected:,} bytes); download or copy it again"
        )
    return header, metadata


# bytes per element of every dtype the safetensors format names (F4/F6 pack several per byte: skipped)
_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "F8_E4M3FNUZ": 1, "F8_E5M2FNUZ": 1,
                "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "C64": 8, "F64": 8, "I64": 8, "U64": 8}


def _check_entries(path: Path, header: dict) -> int:
    """Check every tensor entry as the safetensors library will (dtype, shape, offsets that tile the
    data block without gaps), so a damaged header is one clear line here instead of a SafetensorError
    or TypeError later. Returns the end of the data block."""
    spans = []
    for key, entry in header.items():
        problem = None
        if not isinstance(entry, dict):
            problem = "is not an object"
        else:
            dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
            if not isinstance(shape, list) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
                problem = f"has an invalid shape {shape!r}"
            elif not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(n, int) and n >= 0 for n in offsets)
                      and offsets[0] <= offsets[1]):
                problem = f"has invalid data_offsets {offsets!r}"
            elif dtype not in _DTYPE_BYTES and dtype not in ("F4", "F6_E2M3", "F6_E3M2"):
                problem = f"has an unknown dtype {dtype!r}"
            elif dtype in _DTYPE_BYTES:
                count = 1
                for n in shape:
                    count *= n
                if offsets[1] - offsets[0] != count * _DTYPE_BYTES[dtype]:
                    problem = f"holds {offsets[1] - offsets[0]} bytes, but shape {shape} of {dtype} needs {count * _DTYPE_BYTES[dtype]}"
        if problem:
            raise UserError(f"{path}: damaged safetensors header (tensor {key!r} {problem}); download or copy the file again")
        spans.append((offsets[0], offsets[1], key))
    position = 0
    for begin, end, key in sorted(spans):
        if begin != position:
            raise UserError(f"{path}: damaged safetensors header (tensor {key!r} starts at byte {begin}, expected {position}); "
                            "download or copy the file again")
        position = end
    return position


@contextlib.contextmanager
def safetensors_errors(path: str | os.PathLike):
    """Turn the safetensors library's own errors for a bad file into one line naming the file."""
    from safetensors import SafetensorError

    try:
        yield
    except SafetensorError as error:
        first = (str(error).strip().splitlines() or ["unreadable"])[0][:200]
        raise UserError(f"{path}: damaged safetensors file ({first}); download or copy it again") from None


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

    with safetensors_errors(path):
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
