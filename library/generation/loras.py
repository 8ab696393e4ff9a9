"""LoRA files applied to a loaded SDXL model at chosen weights, reversibly.

`LoraSet.apply(entries)` first restores every weight it changed before, then merges each entry
(a file at a weight, with optional block weights) through the shared apply module, so every
format works (LoRA, LoCon, LoHa, LoKr, DoRA). Weight 0 leaves a module untouched, so an image at
weight 0 is exactly the base model's. `freeze()` drops the saved base weights once the LoRAs are
final (--network_merge): less memory, no further changes.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from library.errors import UserError
from library.lora import block_weights as bw
from library.lora.combine import Source, merge_into_model
from library.lora.lora_files import read_groups
from library.lora.naming import ModelNames


@dataclass(frozen=True)
class LoraEntry:
    path: str
    weight: float = 1.0
    lbw: str | None = None  # preset name or comma-separated values


class LoraSet:
    def __init__(self, model, uncovered_weight: float | None = 1.0):
        self.model = model
        self.names = ModelNames(model.unet, model.text_encoders)
        self.uncovered_weight = uncovered_weight
        self._files: dict[str, dict] = {}
        self._saved: dict[str, tuple] = {}
        self._frozen = False
        self.current: tuple = ()

    def groups(self, path: str) -> dict:
        if path not in self._files:
            self._files[path] = read_groups(path)[0]
        return self._files[path]

    def _source(self, entry: LoraEntry) -> Source:
        groups = self.groups(entry.path)
        strengths = {}
        if entry.lbw:
            values, preset = bw.parse_vector(entry.lbw)
            layout = bw.sdxl_layout(values, preset)
            strengths = bw.module_strengths(groups, values, layout, self.uncovered_weight, entry.path)
        return Source(entry.path, groups, entry.weight, strengths)

    @torch.no_grad()
    def apply(self, entries) -> None:
        entries = tuple(entries)
        if entries == self.current:
            return
        if self._frozen:
            raise UserError("--network_merge merged the LoRAs once; per-prompt LoRA weights or grid weights need "
                            "it left out")
        for name, (weight, bias) in self._saved.items():
            module = self.names.ref(name).module
            module.weight.data.copy_(weight)
            if bias is not None:
                module.bias.data.copy_(bias)
        sources = [self._source(e) for e in entries]
        for source in sources:
            for name in source.groups:
                if name not in self._saved and name in self.names.refs:
                    module = self.names.ref(name).module
                    bias = getattr(module, "bias", None)
                    self._saved[name] = (module.weight.data.clone(), None if bias is None else bias.data.clone())
        merge_into_model(sources, self.model.unet, self.model.text_encoders)
        self.current = entries

    def freeze(self) -> None:
        self._saved.clear()
        self._files.clear()
        self._frozen = True


def resolve(name: str, folders) -> str:
    """A `<lora:name>` tag -> the file `name.safetensors` in one of `folders`."""
    candidates = [Path(f) / f"{name}.safetensors" for f in folders]
    for path in candidates:
        if path.is_file():
            return str(path)
    where = ", ".join(str(f) for f in folders) or "(no folder: give --network_dir)"
    raise UserError(f"<lora:{name}>: no {name}.safetensors in {where}")
