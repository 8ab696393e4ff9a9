"""Merge SDXL LoRA files of any rank and format into one LoRA of a chosen rank, through an SVD.

    python networks/svd_merge_lora.py --models a.safetensors b.safetensors --ratios 0.7 0.5 \\
        --save_to ab.safetensors --new_rank 16 [--new_conv_rank 8] [--lbws XL_ALL XL_face]

For every module, the deltas are summed (ratio x block weight x dW of each file; LoRA, LoCon, LoHa,
LoKr all work) and the sum is truncated to --new_rank by SVD (--new_conv_rank for 3x3 convs,
default --new_rank); alpha = rank. With a rank at or above the sum's rank the result is exact. A
dynamic method (as in resize_lora.py) chooses each module's rank up to --new_rank. DoRA files are
refused: DoRA re-normalises W + dW with the base weight, so it has no delta to add.
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
    parser.add_argument("--models", nargs="+", required=True, help="LoRA .safetensors files")
    parser.add_argument("--ratios", nargs="+", type=float, default=None, help="one ratio per model (default 1.0)")
    parser.add_argument("--lbws", nargs="+", default=None, help="one block-weight vector or preset per model")
    parser.add_argument("--uncovered_weight", type=float, default=None,
                        help="with --lbws: weight of modules outside the layout's blocks (default: refuse)")
    parser.add_argument("--save_to", required=True, help="output .safetensors file")
    parser.add_argument("--new_rank", type=int, required=True, help="rank of the result (maximum if dynamic)")
    parser.add_argument("--new_conv_rank", type=int, default=None, help="rank of 3x3 convs (default: --new_rank)")
    parser.add_argument("--dynamic_method", choices=["sv_ratio", "sv_fro", "sv_cumulative"], default=None,
                        help="choose each module's rank from its singular values (see resize_lora.py)")
    parser.add_argument("--dynamic_param", type=float, default=None, help="parameter of --dynamic_method")
    parser.add_argument("--precision", choices=["float", "fp16", "bf16"], default="float",
                        help="accepted for kohya compatibility; the SVDs always run in float32")
    parser.add_argument("--save_precision", choices=["float", "fp16", "bf16"], default=None,
                        help="dtype of the saved tensors (default: float)")
    parser.add_argument("--verbose", action="store_true", help="print the rank and retained energy of every module")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from library.lora import rerank
    from library.lora.block_weights import flatten_groups
    from library.lora.file_io import save_dtype, save_lora
    from library.lora.lora_files import (derived_metadata, ranks_summary, refuse_dora, refuse_overwriting_inputs,
                                         require_safetensors_output)
    from networks.resize_lora import check_dynamic
    from networks.sdxl_merge_lora import _sources

    if args.new_rank < 1 or (args.new_conv_rank is not None and args.new_conv_rank < 1):
        raise UserError("--new_rank and --new_conv_rank must be at least 1")
    check_dynamic(args.dynamic_method, args.dynamic_param)
    require_safetensors_output(args.save_to)
    refuse_overwriting_inputs(args.save_to, args.models)
    sources, metadata = _sources(args)
    for source in sources:
        refuse_dora(source.groups, source.path, "an SVD merge")
    groups, results = rerank.svd_merge(sources, args.new_rank, args.new_conv_rank, args.dynamic_method,
                                       args.dynamic_param)
    if not groups:
        raise UserError("nothing to write: every module has weight 0")
    if args.verbose:
        for result in results:
            print(rerank.describe(result))
    ranks = ranks_summary(r.new_rank for r in results)
    meta = derived_metadata(metadata[0], "svd merge",
                            {"models": [Path(s.path).name for s in sources], "ratios": [s.ratio for s in sources],
                             "new_rank": args.new_rank},
                            ss_network_module="networks.lora", ss_network_dim=ranks, ss_network_alpha=ranks)
    save_lora(args.save_to, flatten_groups(groups), meta, save_dtype(args.save_precision))
    print(f"wrote {args.save_to}: {len(sources)} files merged, {rerank.summary(results)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
