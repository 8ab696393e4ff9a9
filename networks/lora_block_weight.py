"""Bake a block-weight vector into a new SDXL LoRA file (what `<lora:name:1:lbw=...>` does at run
time, made permanent so that every UI sees the same result).

    python networks/lora_block_weight.py --model my.safetensors --save_to my_face.safetensors --weights XL_face
    python networks/lora_block_weight.py --model my.safetensors --save_to my_out.safetensors \\
        --weights 1,0,0,0,0,1,1,1,1,1,1,1
    python networks/lora_block_weight.py --list_presets

Vectors have 12 values for LoRA files (BASE, IN04, IN05, IN07, IN08, MID, OUT00-OUT05) or 20 for
LoCon files (BASE, IN00-IN08, MID, OUT00-OUT08); BASE covers both text encoders. 17/26-value SD1.x
vectors are refused with the SDXL preset to use. Each module's delta is scaled exactly (only its
first factor changes: lora_up, hada_w1_a, lokr_w1); a weight of 0 removes the module. LoRA, LoCon,
LoHa and LoKr files work; DoRA files are refused (their effect is not linear in the weights).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from library.entry import run_cli  # noqa: E402

from library.errors import UserError  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="LoRA .safetensors file to read")
    parser.add_argument("--save_to", help="new .safetensors file (never one of the inputs)")
    parser.add_argument("--weights", help="a preset name or comma-separated block weights (12 or 20 values)")
    parser.add_argument("--presets_file", default=None, help="presets file (default: networks/lbw_presets.txt)")
    parser.add_argument("--uncovered_weight", type=float, default=None,
                        help="weight for modules no block of the layout covers (time_embed, label_emb, out, "
                             "or attention-free blocks under a 12-value vector); default: refuse such files")
    parser.add_argument("--save_precision", choices=["float", "fp16", "bf16"], default=None,
                        help="dtype of the saved tensors (default: as in the input)")
    parser.add_argument("--list_presets", action="store_true", help="print the presets and exit")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from library.lora import block_weights as bw
    from library.lora.file_io import save_dtype, save_lora
    from library.lora.lora_files import (derived_metadata, read_groups, refuse_dora, refuse_overwriting_inputs,
                                         require_safetensors_output)

    presets = bw.load_presets(args.presets_file)
    if args.list_presets:
        for name, values in presets.items():
            layout = bw.LAYOUT_BY_LENGTH.get(len(values), f"{len(values)} values")
            print(f"{name:12s} {layout:8s} {','.join(f'{v:g}' for v in values)}")
        return 0
    if not (args.model and args.save_to and args.weights):
        raise UserError("--model, --save_to and --weights are required (or --list_presets)")
    require_safetensors_output(args.save_to)
    refuse_overwriting_inputs(args.save_to, [args.model])
    values, preset = bw.parse_vector(args.weights, presets)
    layout = bw.sdxl_layout(values, preset, presets)
    groups, metadata = read_groups(args.model)
    refuse_dora(groups, args.model, "baking block weights")
    strengths = bw.module_strengths(groups, values, layout, args.uncovered_weight, str(args.model))
    baked = bw.bake(groups, strengths)
    if not baked:
        raise UserError("every module has weight 0; the result would be an empty LoRA")
    vector = ",".join(f"{v:g}" for v in values)
    meta = derived_metadata(metadata, "block weights", {"weights": preset or vector, "layout": layout})
    save_lora(args.save_to, bw.flatten_groups(baked), meta, save_dtype(args.save_precision))
    dropped = len(groups) - len(baked)
    print(f"wrote {args.save_to}: {len(baked)} modules with block weights {preset or vector} ({layout}), "
          f"{dropped} modules at weight 0 removed")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
