"""LoRA key names: in-memory module paths <-> the names written in LoRA files (DESIGN.md 4.1).

Canonical file names are `lora_unet_<SAI path>` for the UNet (diffusers paths are mapped through
library.models.unet_names) and `lora_te1_text_model_...` / `lora_te2_text_model_...` for the text
encoders. The `text_model_` level is always written, because transformers 5's CLIPTextModel has
no such level in memory while ComfyUI and A1111 only load names that carry it. TE2's
`text_projection` sits beside `text_model`, not inside it: it is written `lora_te2_text_projection`
(as ComfyUI and LyCORIS name it); the old spelling `lora_te2_text_model_text_projection` still loads.

On load, `ModelNames.normalise` accepts the other spellings seen in the wild and maps them to the
canonical names: diffusers-style UNet names (`lora_unet_down_blocks_...`), text-encoder names
without `text_model_`, and PEFT/diffusers dotted keys (`unet.<path>.lora_A.weight`,
`text_encoder_2.<path>.lora_B.weight`, `lora_magnitude_vector`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from library.models.unet_names import SDXL_UNET_LAYOUT, UNetLayout, layout_from_config

UNET_PREFIX = "lora_unet_"
TE_PREFIXES = ("lora_te1_", "lora_te2_")
CANONICAL_PREFIXES = (UNET_PREFIX,) + TE_PREFIXES
TEXT_MODEL = "text_model."
# Text-encoder modules outside the text_model level (CLIPTextModelWithProjection.text_projection).
_BESIDE_TEXT_MODEL = ("text_projection",)
# diffusers pipelines save PEFT keys under these component names.
_PEFT_COMPONENTS = {"unet": "unet", "text_encoder": "te1", "text_encoder_2": "te2"}

# Dotted (PEFT / old diffusers) suffixes -> kohya/LyCORIS suffixes.
_SUFFIX_ALIASES = {
    "lora_A.weight": "lora_down.weight",
    "lora_B.weight": "lora_up.weight",
    "lora.down.weight": "lora_down.weight",
    "lora.up.weight": "lora_up.weight",
    "lora_magnitude_vector": "dora_scale",
}
# Where a dotted key's module path ends: the first of these markers.
_DOTTED_MARKERS = (".lora_A.", ".lora_B.", ".lora.down.", ".lora.up.", ".lora_down.", ".lora_up.",
                   ".lora_magnitude_vector", ".alpha", ".dora_scale")


def unet_lora_name(module_path: str, layout: UNetLayout = SDXL_UNET_LAYOUT) -> str:
    """diffusers UNet module path -> `lora_unet_<SAI path>`; ValueError when the path has no SAI name."""
    sai = layout.to_sai(module_path)
    if sai is None:
        raise ValueError(f"UNet module '{module_path}' has no SAI name; it cannot be written to a LoRA file")
    return UNET_PREFIX + sai.replace(".", "_")


def _full_te_path(module_path: str) -> str:
    """The module path as in CLIPTextModel(WithProjection) with its `text_model.` level."""
    if module_path.startswith(TEXT_MODEL) or module_path.split(".")[0] in _BESIDE_TEXT_MODEL:
        return module_path
    return TEXT_MODEL + module_path


def te_lora_name(index: int, module_path: str) -> str:
    """Text-encoder module path (with or without `text_model.`) -> `lora_te{index}_text_model_...`
    (`lora_te{index}_text_projection` for the projection, which is not inside text_model)."""
    return f"lora_te{index}_" + _full_te_path(module_path).replace(".", "_")


def split_key(key: str) -> tuple[str, str]:
    """A file key -> (module part, suffix). Underscore-style keys split at the first dot."""
    if key.startswith(("lora_unet_", "lora_te")):
        name, _, suffix = key.partition(".")
        return name, suffix
    for marker in _DOTTED_MARKERS:
        at = key.find(marker)
        if at > 0:
            return key[:at], key[at + 1:]
    return key, ""


def normalise_suffix(suffix: str) -> str:
    suffix = suffix.replace(".default.", ".").removesuffix(".default")  # PEFT adapter name
    return _SUFFIX_ALIASES.get(suffix, suffix)


def _has_own_weight(module: torch.nn.Module) -> bool:
    return isinstance(module._parameters.get("weight"), torch.Tensor)


@dataclass
class ModuleRef:
    lora_name: str
    component: str  # "unet", "te1" or "te2"
    path: str  # module path in the in-memory model
    module: torch.nn.Module


class ModelNames:
    """Every weight-carrying module of an SDXL model under its canonical LoRA name and its aliases."""

    def __init__(self, unet=None, text_encoders=(), layout: UNetLayout | None = None):
        self.refs: dict[str, ModuleRef] = {}
        self._alias: dict[str, str] = {}
        if unet is not None:
            if layout is None:
                layout = layout_from_config(unet.config) if hasattr(unet, "config") else SDXL_UNET_LAYOUT
            for path, module in unet.named_modules():
                if not _has_own_weight(module) or layout.to_sai(path) is None:
                    continue
                name = unet_lora_name(path, layout)
                self._add(ModuleRef(name, "unet", path, module),
                          [UNET_PREFIX + path.replace(".", "_"), "unet." + path])
        if text_encoders is not None and not isinstance(text_encoders, (list, tuple)):
            text_encoders = [text_encoders]
        for index, te in enumerate(text_encoders or (), start=1):
            if te is None:
                continue
            component = f"te{index}"
            peft = "text_encoder" if index == 1 else "text_encoder_2"
            for path, module in te.named_modules():
                if not _has_own_weight(module):
                    continue
                full = _full_te_path(path)
                bare = full.removeprefix(TEXT_MODEL)
                name = te_lora_name(index, path)
                aliases = [f"lora_te{index}_" + bare.replace(".", "_"), f"{peft}.{full}", f"{peft}.{bare}",
                           f"lora_te{index}_" + (TEXT_MODEL + bare).replace(".", "_")]  # our files before the fix
                if index == 1:  # single-encoder files (SD1 style) use lora_te_
                    aliases += ["lora_te_" + full.replace(".", "_"), "lora_te_" + bare.replace(".", "_")]
                self._add(ModuleRef(name, component, path, module), aliases)

    def _add(self, ref: ModuleRef, aliases) -> None:
        self.refs[ref.lora_name] = ref
        self._alias[ref.lora_name] = ref.lora_name
        for alias in aliases:
            self._alias.setdefault(alias, ref.lora_name)

    def canonical(self, name: str) -> str | None:
        """Any accepted spelling of a module name -> its canonical LoRA name, or None."""
        return self._alias.get(name)

    def ref(self, lora_name: str) -> ModuleRef:
        return self.refs[lora_name]

    def normalise(self, state_dict: dict) -> tuple[dict, list[str]]:
        """(state dict with canonical keys and suffixes, keys that name no module of this model).

        Two keys that land on the same canonical key (a file mixing naming styles) are both
        reported as unmapped, since loading either silently would hide the other.
        """
        out, origin, unmapped = {}, {}, []
        for key, value in state_dict.items():
            name, suffix = split_key(key)
            canonical = self.canonical(name)
            if canonical is None or not suffix:
                unmapped.append(key)
                continue
            new_key = f"{canonical}.{normalise_suffix(suffix)}"
            if new_key in out:
                unmapped += [origin[new_key], key]
                continue
            out[new_key] = value
            origin[new_key] = key
        return out, sorted(set(unmapped))


def group_by_module(state_dict: dict) -> dict[str, dict[str, torch.Tensor]]:
    """{'lora_unet_x.lora_down.weight': t, ...} -> {'lora_unet_x': {'lora_down.weight': t, ...}}."""
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        name, suffix = split_key(key)
        groups.setdefault(name, {})[suffix] = value
    return groups
