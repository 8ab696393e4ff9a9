"""Merge SDXL LoRAs into a checkpoint, or into one LoRA file.

Into a checkpoint (single .safetensors file or diffusers folder in, same choice out):
    python networks/sdxl_merge_lora.py --sd_model base.safetensors --save_to merged.safetensors \\
        --models style.safetensors char.safetensors --ratios 0.8 0.6 [--lbws XL_ALL XL_face]
  Every format the toolkit reads merges here (LoRA, LoCon, LoHa, LoKr, Tucker, DoRA, full diffs;
  SAI, diffusers or PEFT names), applied one after the other: W <- W + ratio * dW (DoRA: its
  re-normalised weight). --save_to ending in .safetensors writes a single file, anything else a
  diffusers folder.

Into one LoRA (no --sd_model):
    --concat   exact: ranks are concatenated (rank = sum of ranks), the result equals applying all
    (default)  kohya's sum for equal ranks: approximate when more than one file has a module
               (use --concat or networks/svd_merge_lora.py for an exact or re-ranked result)
  Only plain LoRA/LoCon factors can be combined this way; LoHa/LoKr/Tucker files go through
  svd_merge_lora.py, and DoRA files can only be merged into a checkpoint.

--lbws gives each model a block-weight vector or preset (12 or 20 values; see lora_block_weight.py).
Outputs are written atomically and never over an input.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from library.entry import run_cli  # noqa: E402

from library.errors import UserError  # noqa: E402

PRECISIONS = ("float", "fp16", "bf16")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sd_model", default=None, help="SDXL checkpoint (.safetensors) or diffusers folder to merge "
                                                         "into; without it the LoRAs are merged into one LoRA")
    parser.add_argument("--save_to", required=True, help="output: .safetensors file, or a folder (diffusers)")
    parser.add_argument("--models", nargs="+", required=True, help="LoRA .safetensors files")
    parser.add_argument("--ratios", nargs="+", type=float, default=None, help="one ratio per model (default 1.0)")
    parser.add_argument("--lbws", nargs="+", default=None,
                        help="one block-weight vector or preset per model (12 or 20 values, e.g. XL_face); "
                             "'' or ALL for none")
    parser.add_argument("--uncovered_weight", type=float, default=None,
                        help="with --lbws: weight of modules outside the layout's blocks (default: refuse)")
    parser.add_argument("--concat", action="store_true", help="LoRA merge: concatenate ranks (exact)")
    parser.add_argument("--precision", choices=PRECISIONS, default="float", help="dtype used while merging")
    parser.add_argument("--save_precision", choices=PRECISIONS, default=None,
                        help="dtype of the saved tensors (default: --precision)")
    parser.add_argument("--vae", default=None, help="checkpoint merge: VAE to load instead of the model's own")
    return parser


def _sources(args):
    from library.lora import block_weights as bw
    from library.lora.combine import Source
    from library.lora.lora_files import read_groups

    ratios = args.ratios or [1.0] * len(args.models)
    if len(ratios) != len(args.models):
        raise UserError(f"--ratios has {len(ratios)} values for {len(args.models)} --models")
    lbws = args.lbws or [""] * len(args.models)
    if len(lbws) != len(args.models):
        raise UserError(f"--lbws has {len(lbws)} entries for {len(args.models)} --models")
    presets = bw.load_presets() if any(lbws) else {}
    sources, metadata = [], []
    for path, ratio, lbw in zip(args.models, ratios, lbws):
        groups, meta = read_groups(path)
        strengths = {}
        if lbw:
            values, preset = bw.parse_vector(lbw, presets)
            layout = bw.sdxl_layout(values, preset, presets)
            strengths = bw.module_strengths(groups, values, layout, args.uncovered_weight, path)
        sources.append(Source(str(path), groups, ratio, strengths))
        metadata.append(meta)
    return sources, metadata


def merge_into_checkpoint(args, sources) -> None:
    from library.lora.combine import merge_into_model
    from library.lora.file_io import save_dtype
    from library.models.sdxl_loader import load_sdxl

    model = load_sdxl(args.sd_model, vae=args.vae, dtype=save_dtype(args.precision))
    count = merge_into_model(sources, model.unet, model.text_encoders)
    dtype = save_dtype(args.save_precision or args.precision)
    record = json.dumps([{"file": Path(s.path).name, "ratio": s.ratio, "block_weights": bool(s.strengths)}
                         for s in sources])
    out = Path(args.save_to)
    if out.suffix.lower() == ".safetensors":
        model.save_single_file(out, dtype, metadata={"merged_loras": record})
    else:
        for part in (model.unet, model.text_encoder1, model.text_encoder2, model.vae):
            part.to(dtype)
        model.save_diffusers(out)  # written beside the target, then moved into place
    kind = "single file" if out.suffix.lower() == ".safetensors" else "diffusers folder"
    print(f"wrote {out}: {count} module merges from {len(sources)} LoRA file(s) into {args.sd_model} "
          f"({kind}, {args.save_precision or args.precision})")


def merge_into_lora(args, sources, metadata) -> None:
    from library.lora.block_weights import flatten_groups
    from library.lora.combine import concat, sum_equal_rank
    from library.lora.file_io import save_dtype, save_lora
    from library.lora.lora_files import derived_metadata, ranks_summary, require_safetensors_output

    require_safetensors_output(args.save_to)
    groups, ranks = concat(sources) if args.concat else sum_equal_rank(sources)
    if not groups:
        raise UserError("nothing to write: every module has weight 0")
    alphas = {float(g["alpha"]) for g in groups.values()}
    meta = derived_metadata(
        metadata[0], "merge" + (" (concat)" if args.concat else " (sum)"),
        {"models": [Path(s.path).name for s in sources], "ratios": [s.ratio for s in sources]},
        ss_network_module="networks.lora", ss_network_dim=ranks_summary(ranks.values()),
        ss_network_alpha=f"{alphas.pop():g}" if len(alphas) == 1 else "Dynamic")
    tensors = {k: v.to(save_dtype(args.precision)) for k, v in flatten_groups(groups).items()}
    save_lora(args.save_to, tensors, meta, save_dtype(args.save_precision or args.precision))
    shared = sum(1 for name in groups if sum(name in s.groups for s in sources) > 1)
    how = "rank-concatenated (exact)" if args.concat else "summed"
    print(f"wrote {args.save_to}: {len(groups)} modules, {how}, rank {ranks_summary(ranks.values())}")
    if not args.concat and shared:
        print(f"note: {shared} modules are in more than one input; summing factors is approximate for them "
              f"(use --concat or svd_merge_lora.py for an exact result)")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from library.lora.lora_files import refuse_overwriting_inputs

    refuse_overwriting_inputs(args.save_to, [args.sd_model, args.vae, *args.models])
    sources, metadata = _sources(args)
    if args.sd_model:
        if args.concat:
            raise UserError("--concat merges LoRAs into one LoRA; leave it out when merging into --sd_model")
        merge_into_checkpoint(args, sources)
    else:
        merge_into_lora(args, sources, metadata)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
