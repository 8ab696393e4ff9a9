"""LoRA block weights (the "LoRA Block Weight" vectors of A1111 users): layouts, presets, baking.

A vector gives one strength per block. Its length names the layout:
  SDXL 12  BASE, IN04, IN05, IN07, IN08, MID, OUT00-OUT05   (the blocks with attention: LoRA files)
  SDXL 20  BASE, IN00-IN08, MID, OUT00-OUT08                (every block: LoCon files)
  SD1.x 17 BASE, IN01, IN02, IN04, IN05, IN07, IN08, MID, OUT03-OUT11
  SD1.x 26 BASE, IN00-IN11, MID, OUT00-OUT11
BASE covers both text encoders; INnn / OUTnn are the SAI input_blocks / output_blocks indices; MID
(also written M00) is the middle block. The toolkit's files are SDXL, so SD1.x vectors are refused
with the SDXL preset to use instead. SDXL modules outside every block of a layout (time_embed,
label_emb, out, and for the 12-block layout the attention-free blocks) are "uncovered": an error
unless the caller gives them a weight.

Baking scales only the first factor of each module (lora_up, hada_w1_a, lokr_w1 or lokr_w1_a,
diff), which scales its delta exactly; weight 0 drops the module. DoRA is not linear and is refused
by the callers.
"""
from __future__ import annotations

from pathlib import Path

import torch

from library.errors import UserError
from library.lora import weights_math

LAYOUTS = {
    "SDXL-12": ["BASE", "IN04", "IN05", "IN07", "IN08", "MID"] + [f"OUT{i:02d}" for i in range(6)],
    "SDXL-20": ["BASE"] + [f"IN{i:02d}" for i in range(9)] + ["MID"] + [f"OUT{i:02d}" for i in range(9)],
    "SD1-17": ["BASE", "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "MID"] + [f"OUT{i:02d}" for i in range(3, 12)],
    "SD1-26": ["BASE"] + [f"IN{i:02d}" for i in range(12)] + ["MID"] + [f"OUT{i:02d}" for i in range(12)],
}
LAYOUT_BY_LENGTH = {len(blocks): name for name, blocks in LAYOUTS.items()}
PRESETS_FILE = Path(__file__).resolve().parents[2] / "networks" / "lbw_presets.txt"
_FIRST_FACTOR = ("lora_up.weight", "hada_w1_a", "lokr_w1", "lokr_w1_a", "diff", "diff_b")


def block_of(name: str) -> str | None:
    """Block id of a canonical module name: BASE, INnn, MID, OUTnn; None for time_embed/label_emb/out."""
    if name.startswith(("lora_te1_", "lora_te2_", "lora_te_")):
        return "BASE"
    if not name.startswith("lora_unet_"):
        return None
    rest = name[len("lora_unet_"):]
    parts = rest.split("_")
    if rest.startswith("input_blocks_"):
        return f"IN{int(parts[2]):02d}"
    if rest.startswith("middle_block_"):
        return "MID"
    if rest.startswith("output_blocks_"):
        return f"OUT{int(parts[2]):02d}"
    return None


def load_presets(path: str | Path | None = None) -> dict[str, list[float]]:
    """NAME:v1,v2,... lines (blank lines and # comments ignored) -> {NAME: [floats]}."""
    path = Path(path) if path else PRESETS_FILE
    if not path.is_file():
        raise UserError(f"{path}: block-weight presets file not found")
    presets = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, values = line.partition(":")
        try:
            if not sep:
                raise ValueError("missing ':'")
            presets[name.strip()] = [float(v) for v in values.split(",")]
        except ValueError as error:
            raise UserError(f"{path}:{number}: '{line}' is not NAME:v1,v2,... ({error})") from None
    return presets


def parse_vector(text: str, presets: dict | None = None) -> tuple[list[float], str | None]:
    """A preset name or comma-separated numbers -> (values, preset name or None)."""
    text = str(text).strip()
    presets = presets if presets is not None else load_presets()
    if text in presets:
        return list(presets[text]), text
    try:
        return [float(v) for v in text.split(",")], None
    except ValueError:
        raise UserError(f"block weights '{text}' are neither comma-separated numbers nor a preset "
                        f"(known: {', '.join(sorted(presets))})") from None


def _sdxl_preset_for(values: list[float], preset: str | None, presets: dict) -> str:
    if preset is None:
        preset = next((name for name, v in presets.items() if v == values and len(v) == len(values)), None)
    if preset and f"XL_{preset}" in presets:
        return f"the SDXL preset XL_{preset} (our 12-block derivation of {preset})"
    return "an SDXL preset such as XL_ALL, XL_INS, XL_OUTALL (see networks/lbw_presets.txt)"


def sdxl_layout(values: list[float], preset: str | None = None, presets: dict | None = None) -> str:
    """The SDXL layout name for a vector; UserError explaining SD1.x or unknown lengths."""
    layout = LAYOUT_BY_LENGTH.get(len(values))
    if layout in ("SDXL-12", "SDXL-20"):
        return layout
    what = f"preset {preset}" if preset else "the vector"
    if layout is not None:  # an SD1.x layout
        presets = presets if presets is not None else load_presets()
        raise UserError(
            f"{what} has {len(values)} values, the SD1.x layout ({', '.join(LAYOUTS[layout])}); this is an SDXL "
            f"LoRA, whose UNet has no IN01/IN02 attention blocks and 9 output blocks, so SD1.x vectors do not "
            f"map onto it. Use 12 values (BASE, IN04, IN05, IN07, IN08, MID, OUT00-OUT05), 20 values (LoCon: "
            f"BASE, IN00-IN08, MID, OUT00-OUT08), or {_sdxl_preset_for(values, preset, presets)}")
    raise UserError(f"{what} has {len(values)} values; SDXL block weights have 12 (BASE, IN04, IN05, IN07, "
                    f"IN08, MID, OUT00-OUT05) or 20 (BASE, IN00-IN08, MID, OUT00-OUT08)")


def module_strengths(names, values: list[float], layout: str, uncovered_weight: float | None = None,
                     source: str = "LoRA") -> dict[str, float]:
    """{module name: block strength} for every module; uncovered modules need `uncovered_weight`."""
    weight_of = dict(zip(LAYOUTS[layout], values))
    strengths, uncovered = {}, []
    for name in names:
        block = block_of(name)
        if block in weight_of:
            strengths[name] = weight_of[block]
        elif uncovered_weight is not None:
            strengths[name] = uncovered_weight
        else:
            uncovered.append(name)
    if uncovered:
        blocks = sorted({block_of(n) or n.split("_")[2] for n in uncovered})
        hint = " (use a 20-value vector for LoCon files)" if layout == "SDXL-12" else ""
        raise UserError(f"{source}: {len(uncovered)} modules are in blocks the {layout} layout does not cover "
                        f"({', '.join(blocks)}){hint}; give them a weight with --uncovered_weight")
    return strengths


def scale_group(group: dict, strength: float) -> dict:
    """The key group with its delta scaled by `strength` (only the first factor changes)."""
    if weights_math.is_dora(group):
        raise UserError("DoRA modules cannot be scaled linearly (the norm of W + dW depends on the base)")
    out = dict(group)
    for key in _FIRST_FACTOR:
        if key in out:
            value = out[key]
            out[key] = (value.to(torch.float32) * strength).to(value.dtype)
            if key != "diff":  # diff_b goes with diff; every other algorithm has one first factor
                break
    return out


def bake(groups: dict, strengths: dict[str, float]) -> dict:
    """Groups with each module's strength baked in; strength 0 removes the module."""
    return {name: scale_group(group, strengths[name]) for name, group in groups.items() if strengths[name] != 0}


def flatten_groups(groups: dict) -> dict:
    """{name: {suffix: t}} -> {"name.suffix": t}."""
    return {f"{name}.{suffix}": value for name, group in groups.items() for suffix, value in group.items()}
