"""Value types of config options, each parsing both command-line strings and TOML values.

A parser returns the converted value or raises ValueError with a short description of what was
expected; the config loader turns that into an error naming the file, section and key.
"""
from __future__ import annotations

import ast

from library.training.config.lr_scheduler_names import parse_lr_scheduler


def _is_bool(value) -> bool:
    return isinstance(value, bool)


def parse_bool(value):
    if _is_bool(value):
        return value
    if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
        return True
    if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
        return False
    raise ValueError("expected true or false")


def parse_int(value):
    if _is_bool(value):
        raise ValueError("expected a whole number, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ValueError(f"expected a whole number, got {value!r}")


def parse_float(value):
    if _is_bool(value):
        raise ValueError("expected a number, got a boolean")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise ValueError(f"expected a number, got {value!r}")


def parse_str(value):
    if isinstance(value, str):
        return value
    raise ValueError(f"expected a string, got {type(value).__name__} {value!r}")


def parse_str_list(value):
    """A list of strings; a single string becomes a one-element list (TOML users write both)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ValueError('expected a list of strings, e.g. ["a=1", "b=2"]')


def parse_int_or_float(value):
    """Counts that may also be given as a fraction (lr_warmup_steps = 0.1 means 10% of the steps)."""
    if _is_bool(value):
        raise ValueError("expected a number, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value >= 1 and value.is_integer() else value
    if isinstance(value, str):
        number = parse_float(value)
        return int(number) if number >= 1 and number.is_integer() else number
    raise ValueError(f"expected a step count or a fraction, got {value!r}")


def parse_float_or_float_list(value):
    """A learning rate, or one per text encoder (text_encoder_lr = [1e-5, 5e-6])."""
    if isinstance(value, (list, tuple)):
        return [parse_float(v) for v in value]
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            return [parse_float(v) for v in ast.literal_eval(value)]
        except (SyntaxError, ValueError):
            raise ValueError(f"expected a number or a list of numbers, got {value!r}") from None
    return parse_float(value)


def parse_resolution(value):
    """"1024,1024", "1024", 1024 or [1024, 1024] -> (width, height)."""
    if isinstance(value, (list, tuple)) and len(value) in (1, 2):
        numbers = [parse_int(v) for v in value]
    elif isinstance(value, int) and not _is_bool(value):
        numbers = [value]
    elif isinstance(value, str):
        try:
            numbers = [int(v.strip()) for v in value.split(",")]
        except ValueError:
            raise ValueError(f'expected "width,height" such as "1024,1024", got {value!r}') from None
    else:
        raise ValueError(f'expected "width,height" such as "1024,1024", got {value!r}')
    if len(numbers) == 1:
        numbers = numbers * 2
    if len(numbers) != 2 or min(numbers) <= 0:
        raise ValueError(f'expected two positive numbers "width,height", got {value!r}')
    return tuple(numbers)


def parse_table(value):
    """A TOML table (kohya's custom_attributes = {diff_output_preservation = true})."""
    if isinstance(value, dict):
        return dict(value)
    raise ValueError(f"expected a table such as {{ key = value }}, got {value!r}")


def parse_float_pair(value):
    """"2.0,4.0" or [2.0, 4.0] -> (low, high)."""
    if isinstance(value, str):
        parts = value.split(",")
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        raise ValueError(f'expected two numbers "low,high", got {value!r}')
    if len(parts) != 2:
        raise ValueError(f'expected two numbers "low,high", got {value!r}')
    return tuple(parse_float(p) for p in parts)


TYPE_NAMES = {
    parse_bool: "true/false",
    parse_int: "whole number",
    parse_float: "number",
    parse_str: "string",
    parse_str_list: "list of strings",
    parse_int_or_float: "step count or fraction",
    parse_float_or_float_list: "number or list of numbers",
    parse_resolution: '"width,height"',
    parse_float_pair: '"low,high"',
    parse_lr_scheduler: "scheduler name",
    parse_table: "table",
}
