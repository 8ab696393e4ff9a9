"""Sample-prompt files, in kohya's three forms, read into `SamplePrompt`s.

  .txt   one prompt per line: `a cat --n blurry --w 1024 --h 1024 --d 42 --l 7 --s 28 --ss euler_a`
         (lines starting with # are comments)
  .toml  [prompt] defaults + [[prompt.subset]] entries with prompt, negative_prompt, width,
         height, seed, scale, sample_steps, sample_sampler
  .json  a list of objects with those keys
Flags are matched case-insensitively, as kohya matches them. Flags that do not shape an SDXL LoRA
sample here (kohya's `--g`, `--cn`, `--ctr`, `--rcfg`, `--fs` for other models and ControlNet,
generation-script flags such as `--am`, anything else) are ignored as kohya ignores them, listed in
one notice. In .toml/.json files the keys kohya reads for other models are ignored the same way;
any other unknown key is an error naming the file and entry, since a misspelt key would silently
change a sample. A value that is not a number where one is needed is an error.
"""
from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path

from library.errors import UserError

_TXT_FLAGS = {"n": "negative_prompt", "w": "width", "h": "height", "d": "seed", "l": "scale", "s": "sample_steps", "ss": "sample_sampler"}
_NUMERIC = {"width": int, "height": int, "seed": int, "scale": float, "sample_steps": int}


@dataclass(frozen=True)
class SamplePrompt:
    prompt: str
    negative_prompt: str = ""
    width: int | None = None  # None: the training resolution
    height: int | None = None
    seed: int | None = None
    scale: float = 7.5
    sample_steps: int = 30
    sample_sampler: str | None = None  # None: --sample_sampler


# keys kohya's sample loop reads for FLUX, SD3, Lumina or ControlNet, or its loader adds; nothing here for SDXL LoRA
_OTHER_MODEL_KEYS = frozenset({"guidance_scale", "controlnet_image", "cfg_trunc_ratio", "renorm_cfg", "flow_shift", "enum"})


def _convert(values: dict, where: str, ignored: list | None = None) -> dict:
    out = {}
    for key, value in values.items():
        if key in _OTHER_MODEL_KEYS and ignored is not None:
            ignored.append(f"{key} ({where})")
            continue
        if key not in SamplePrompt.__dataclass_fields__:
            raise UserError(f"{where}: unknown key '{key}' (use {', '.join(SamplePrompt.__dataclass_fields__)})")
        if key in _NUMERIC:
            try:
                value = _NUMERIC[key](value)
            except (TypeError, ValueError):
                raise UserError(f"{where}: {key} = {value!r} is not a number") from None
        out[key] = value
    return out


def parse_txt_line(line: str, where: str, ignored: list | None = None) -> SamplePrompt:
    """One .txt line; flags this toolkit does not use are appended to `ignored` as "--flag (where)"."""
    parts = line.split(" --")
    values = {"prompt": parts[0].strip()}
    for part in parts[1:]:
        flag, _, value = part.strip().partition(" ")
        if flag.lower() not in _TXT_FLAGS:
            if ignored is not None:
                ignored.append(f"--{flag} ({where})")
            continue
        values[_TXT_FLAGS[flag.lower()]] = value.strip()
    return SamplePrompt(**_convert(values, where))


def load_sample_prompts(path: str | Path, notices: list | None = None) -> list[SamplePrompt]:
    """The file's prompts; what is ignored (see the module docstring) goes into one of `notices`."""
    path = Path(path)
    ignored: list[str] = []
    prompts = _load(path, ignored)
    if ignored and notices is not None:
        notices.append(f"{path}: ignored what kohya does not use for SDXL LoRA samples either: {', '.join(ignored)}")
    return prompts


def _load(path: Path, ignored: list) -> list[SamplePrompt]:
    if not path.exists():
        raise UserError(f"{path}: sample_prompts file not found")
    text = path.read_text(encoding="utf-8-sig")
    suffix = path.suffix.lower()
    if suffix == ".toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise UserError(f"{path}: invalid TOML ({error})") from None
        table = data.get("prompt")
        if not isinstance(table, dict) or not table.get("subset"):
            raise UserError(f"{path}: expected a [prompt] table with [[prompt.subset]] entries")
        defaults = _convert({k: v for k, v in table.items() if k != "subset"}, f"{path}: [prompt]", ignored)
        prompts = []
        for index, subset in enumerate(table["subset"]):
            values = _convert(subset, f"{path}: [[prompt.subset]] #{index + 1}", ignored)
            if not values.get("prompt"):
                raise UserError(f"{path}: [[prompt.subset]] #{index + 1} has no prompt")
            prompts.append(replace(SamplePrompt(prompt=""), **{**defaults, **values}))
        return prompts
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise UserError(f"{path}: invalid JSON (line {error.lineno}: {error.msg})") from None
        if not isinstance(data, list):
            raise UserError(f"{path}: expected a list of prompt objects")
        return [SamplePrompt(**_convert(entry, f"{path}: entry #{i + 1}", ignored)) for i, entry in enumerate(data)]
    prompts = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip() and not line.lstrip().startswith("#"):
            prompts.append(parse_txt_line(line.strip(), f"{path}:{number}", ignored))
    if not prompts:
        raise UserError(f"{path}: no prompts in the file")
    return prompts
