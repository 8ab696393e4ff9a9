"""kohya-style `network_args` ("key=value" strings) parsed and validated, plus SDXL block indices.

kohya silently ignores a misspelt arg; here every network module declares the args it knows, and
an unknown or malformed one is a UserError that names it.

SDXL blocks (23, as kohya numbers them on SAI names): 0 = time_embed/label_emb, 1-9 =
input_blocks_0..8, 10-12 = middle_block_0..2, 13-21 = output_blocks_0..8, 22 = out.
"""
from __future__ import annotations

import logging
import math
from typing import Callable

from library.errors import UserError

logger = logging.getLogger(__name__)

SDXL_NUM_BLOCKS = 23
NUM_DOWN_OR_UP_BLOCKS = 9
NUM_MID_BLOCKS = 3
LR_WEIGHT_PRESETS = ("cosine", "sine", "linear", "reverse_linear", "zeros")


def split_network_args(args) -> dict:
    """["conv_dim=4", "algo=loha"] (as written in configs) -> {"conv_dim": "4", "algo": "loha"}."""
    out = {}
    for item in args or []:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise UserError(f"network_args: '{item}' is not of the form key=value")
        out[key.strip()] = value.strip()
    return out


def parse_args(kwargs: dict, parsers: dict[str, Callable], owner: str) -> dict:
    """Parse every kwarg with its parser; unknown or malformed args are UserErrors naming them."""
    parsed = {}
    for key, value in kwargs.items():
        if key not in parsers:
            raise UserError(f"network_args: unknown argument '{key}' for {owner} "
                            f"(known: {', '.join(sorted(parsers))})")
        if value is None:
            parsed[key] = None
            continue
        try:
            parsed[key] = parsers[key](value)
        except (ValueError, TypeError) as error:
            raise UserError(f"network_args: {key}={value!r} is not valid: {error}") from None
    return parsed


def as_int(value) -> int:
    if isinstance(value, str) and not value.strip().lstrip("-").isdigit():
        raise ValueError("expected an integer")
    if isinstance(value, float) and not value.is_integer():
        raise ValueError("expected an integer")
    result = int(value)
    if result < 0:
        raise ValueError("expected a non-negative integer")
    return result


def as_float(value) -> float:
    result = float(value)
    if not math.isfinite(result):
        raise ValueError("expected a finite number")
    return result


def as_probability(value) -> float:
    result = as_float(value)
    if not 0.0 <= result < 1.0:
        raise ValueError("expected a probability in [0, 1)")
    return result


def _numbers(value, convert, count: int) -> list:
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    out = [convert(item.strip() if isinstance(item, str) else item) for item in items]
    if len(out) != count:
        raise ValueError(f"expected {count} comma-separated values, got {len(out)}")
    return out


def block_ints(value) -> list[int]:
    return _numbers(value, as_int, SDXL_NUM_BLOCKS)


def block_floats(value) -> list[float]:
    return _numbers(value, as_float, SDXL_NUM_BLOCKS)


def _lr_list(value, count: int, allow_preset: bool) -> list[float]:
    text = ",".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value).strip()
    name, _, offset_text = text.partition("+")
    if name in LR_WEIGHT_PRESETS:
        if not allow_preset:
            raise ValueError("presets are only accepted for down_lr_weight and up_lr_weight")
        offset = as_float(offset_text) if offset_text else 0.0
        last = count - 1
        ramp = [i / last for i in range(count)]
        base = {
            "sine": [math.sin(math.pi / 2 * r) for r in ramp],
            "cosine": [math.sin(math.pi / 2 * r) for r in reversed(ramp)],
            "linear": ramp,
            "reverse_linear": list(reversed(ramp)),
            "zeros": [0.0] * count,
        }[name]
        return [w + offset for w in base]
    try:
        values = [float(s) if s.strip() else 0.0 for s in text.split(",")]
    except ValueError:
        raise ValueError(f"expected {count} comma-separated numbers or one of the presets "
                         f"{', '.join(LR_WEIGHT_PRESETS)} (with an optional +offset)") from None
    if len(values) > count:
        raise ValueError(f"expected at most {count} values, got {len(values)}")
    if len(values) < count:  # kohya fills the missing trailing blocks with 1.0
        logger.warning("lr weight '%s' has %d of %d values; the rest are 1.0", text, len(values), count)
        values += [1.0] * (count - len(values))
    return values


def down_up_lr_weight(value) -> list[float]:
    return _lr_list(value, NUM_DOWN_OR_UP_BLOCKS, allow_preset=True)


def mid_lr_weight(value) -> list[float]:
    return _lr_list(value, NUM_MID_BLOCKS, allow_preset=False)


def block_lr_weights(down, mid, up, zero_threshold: float = 0.0) -> list[float] | None:
    """23 per-block lr factors (None when no block lr weight is set). As kohya: values of a given list
    (its 1.0 fill included) at or below zero_threshold become 0; a list not given, and the
    embedding and output blocks, stay at 1.0."""
    if down is None and mid is None and up is None:
        return None

    def given(values, count):
        return [1.0] * count if values is None else [w if w > zero_threshold else 0.0 for w in values]

    return [1.0] + given(down, NUM_DOWN_OR_UP_BLOCKS) + given(mid, NUM_MID_BLOCKS) + given(up, NUM_DOWN_OR_UP_BLOCKS) + [1.0]


def sdxl_block_index(lora_name: str) -> int:
    """kohya's SDXL block index of a canonical UNet LoRA name; -1 for text encoders or unknown."""
    if not lora_name.startswith("lora_unet_"):
        return -1
    name = lora_name[len("lora_unet_"):]
    if name.startswith(("time_embed_", "label_emb_")):
        return 0
    parts = name.split("_")
    if name.startswith("input_blocks_"):
        return 1 + int(parts[2])
    if name.startswith("middle_block_"):
        return 10 + int(parts[2])
    if name.startswith("output_blocks_"):
        return 13 + int(parts[2])
    if name.startswith("out_"):
        return 22
    return -1
