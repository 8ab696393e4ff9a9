"""Extract a LoRA from the difference between two SDXL models (e.g. a DreamBooth fine-tune and its
base) with a truncated SVD per module.

    python networks/extract_lora_from_models.py --model_org base.safetensors --model_tuned tuned.safetensors \\
        --save_to extracted.safetensors --dim 32 [--conv_dim 16] [--clamp_quantile 0.99] [--min_diff 0.01]

Models are SDXL single files or diffusers folders. The extracted modules are the ones a trained
LoRA has (attention and MLP Linear layers of the UNet transformer blocks and both text encoders;
with --conv_dim also the ResNet/down/upsample convs, i.e. LoCon). Each module gets rank --dim
(3x3 convs --conv_dim) and alpha = rank. A text encoder whose largest weight change is at most
--min_diff is left out. --clamp_quantile clamps the factors' outliers to that quantile of their
absolute values (1 keeps the SVD exact). With enough rank and --clamp_quantile 1 the file
reproduces the difference up to float rounding.
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
    parser.add_argument("--model_org", required=True, help="original (base) SDXL model: file or diffusers folder")
    parser.add_argument("--model_tuned", required=True, help="fine-tuned SDXL model: file or diffusers folder")
    parser.add_argument("--save_to", required=True, help="output LoRA .safetensors file")
    parser.add_argument("--dim", type=int, default=4, help="rank of Linear/1x1 modules (default 4)")
    parser.add_argument("--conv_dim", type=int, default=None, help="rank of 3x3 convs; extracts LoCon (default: none)")
    parser.add_argument("--clamp_quantile", type=float, default=0.99,
                        help="clamp factors to this quantile of their absolute values (default 0.99; 1 = off)")
    parser.add_argument("--min_diff", type=float, default=0.01,
                        help="leave out a text encoder whose weights change by at most this (default 0.01)")
    parser.add_argument("--load_precision", choices=["float", "fp16", "bf16"], default="float",
                        help="dtype the models are loaded in (the SVD runs in float32)")
    parser.add_argument("--save_precision", choices=["float", "fp16", "bf16"], default=None,
                        help="dtype of the saved tensors (default: float)")
    parser.add_argument("--device", default="cpu", help="device for the SVDs (cpu, cuda)")
    parser.add_argument("--sdxl", action="store_true", help="accepted for kohya compatibility (models are always SDXL)")
    parser.add_argument("--no_metadata", action="store_true", help="write only the sshs hashes, no ss_* metadata")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from library.lora.block_weights import flatten_groups
    from library.lora.extract import extract
    from library.lora.file_io import save_dtype, save_lora
    from library.lora.lora_files import derived_metadata, refuse_overwriting_inputs, require_safetensors_output
    from library.lora.metadata import build_modelspec, build_training_metadata
    from library.models.sdxl_loader import load_sdxl

    if args.dim < 1 or (args.conv_dim is not None and args.conv_dim < 1):
        raise UserError("--dim and --conv_dim must be at least 1")
    if not 0 < args.clamp_quantile <= 1:
        raise UserError("--clamp_quantile is a quantile in (0, 1]")
    require_safetensors_output(args.save_to)
    refuse_overwriting_inputs(args.save_to, [args.model_org, args.model_tuned])
    dtype = save_dtype(args.load_precision)
    org = load_sdxl(args.model_org, dtype=dtype)
    tuned = load_sdxl(args.model_tuned, dtype=dtype)
    try:
        groups, max_diff = extract(org, tuned, args.dim, args.conv_dim, args.clamp_quantile, args.min_diff, args.device)
    except ValueError as error:
        raise UserError(f"the two models do not have the same architecture: {error}") from None
    if not groups:
        raise UserError("the models are identical in every extracted module; nothing to write")
    metadata = {}
    if not args.no_metadata:
        network_args = {"conv_dim": args.conv_dim, "conv_alpha": args.conv_dim} if args.conv_dim else {}
        metadata = build_training_metadata(network_module="networks.lora", network_dim=args.dim,
                                           network_alpha=args.dim, network_args=network_args,
                                           output_name=Path(args.save_to).stem)
        metadata.update(build_modelspec(title=Path(args.save_to).stem))
        metadata = derived_metadata(metadata, "extract", {
            "model_org": Path(args.model_org).name, "model_tuned": Path(args.model_tuned).name, "dim": args.dim,
            "conv_dim": args.conv_dim, "clamp_quantile": args.clamp_quantile, "min_diff": args.min_diff})
    save_lora(args.save_to, flatten_groups(groups), metadata, save_dtype(args.save_precision))
    parts = {c: sum(1 for n in groups if n.startswith(f"lora_{c}_")) for c in ("unet", "te1", "te2")}
    print(f"wrote {args.save_to}: {len(groups)} modules "
          f"(UNet {parts['unet']}, TE1 {parts['te1']}, TE2 {parts['te2']}), "
          f"rank {args.dim}" + (f", conv rank {args.conv_dim}" if args.conv_dim else "") +
          "; largest weight change " + ", ".join(f"{c} {v:.3g}" for c, v in sorted(max_diff.items())))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
