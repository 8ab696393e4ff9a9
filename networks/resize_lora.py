"""Change the rank of an SDXL LoRA file with a truncated SVD of each module's delta.

    python networks/resize_lora.py --model big.safetensors --save_to small.safetensors --new_rank 8
    python networks/resize_lora.py --model big.safetensors --save_to dyn.safetensors --new_rank 32 \\
        --dynamic_method sv_fro --dynamic_param 0.95 --verbose

--new_rank is the rank of every Linear/1x1 module (the largest rank with a dynamic method);
--new_conv_rank that of 3x3 convolutions (default: --new_rank). Dynamic methods choose the rank of
each module separately:
  sv_ratio P       keep singular values at least max(S) / P
  sv_cumulative P  keep the fewest leading singular values whose sum reaches P * sum(S)
  sv_fro P         keep the fewest leading singular values that retain P of the Frobenius norm
--verbose prints, per module, the share of sum(S) and of the Frobenius norm the new rank keeps
and the ratio of the largest to the smallest kept singular value. A rank at or above a module's
current rank is lossless. Each module keeps its alpha/rank; LoHa/LoKr modules come out as LoRA.
ss_network_dim/ss_network_alpha become the new values ("Dynamic" when they differ by module).
DoRA files are refused (their effect is not a delta that an SVD can truncate).
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
    parser.add_argument("--model", required=True, help="LoRA .safetensors file to resize")
    parser.add_argument("--save_to", required=True, help="output .safetensors file (never the input)")
    parser.add_argument("--new_rank", type=int, required=True, help="rank (maximum rank with --dynamic_method)")
    parser.add_argument("--new_conv_rank", type=int, default=None,
                        help="rank of 3x3 conv modules (default: --new_rank)")
    parser.add_argument("--dynamic_method", choices=["sv_ratio", "sv_fro", "sv_cumulative"], default=None,
                        help="choose each module's rank from its singular values")
    parser.add_argument("--dynamic_param", type=float, default=None,
                        help="sv_ratio: max/min singular value ratio (> 1); sv_fro, sv_cumulative: share in (0, 1]")
    parser.add_argument("--save_precision", choices=["float", "fp16", "bf16"], default=None,
                        help="dtype of the saved tensors (default: as in the input)")
    parser.add_argument("--device", default="cpu", help="device for the SVDs (cpu, cuda)")
    parser.add_argument("--verbose", action="store_true", help="print the rank and retained energy of every module")
    return parser


def check_dynamic(method, param) -> None:
    if method is None:
        if param is not None:
            raise UserError("--dynamic_param needs --dynamic_method")
        return
    if param is None:
        raise UserError(f"--dynamic_method {method} needs --dynamic_param")
    if method == "sv_ratio" and param < 1:
        raise UserError("--dynamic_param for sv_ratio is a ratio max(S)/min(S) >= 1")
    if method in ("sv_fro", "sv_cumulative") and not 0 < param <= 1:
        raise UserError(f"--dynamic_param for {method} is a share in (0, 1]")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    from library.lora import rerank
    from library.lora.block_weights import flatten_groups
    from library.lora.file_io import save_dtype, save_lora
    from library.lora.lora_files import (derived_metadata, ranks_summary, read_groups, refuse_dora,
                                         refuse_overwriting_inputs, require_safetensors_output)

    if args.new_rank < 1 or (args.new_conv_rank is not None and args.new_conv_rank < 1):
        raise UserError("--new_rank and --new_conv_rank must be at least 1")
    check_dynamic(args.dynamic_method, args.dynamic_param)
    require_safetensors_output(args.save_to)
    refuse_overwriting_inputs(args.save_to, [args.model])
    groups, metadata = read_groups(args.model)
    refuse_dora(groups, args.model, "resizing")
    dtypes = {t.dtype for g in groups.values() for t in g.values() if t.is_floating_point()}
    groups = {n: {k: v.to(args.device, torch.float32) for k, v in g.items()} for n, g in groups.items()}
    resized, results = rerank.resize(groups, args.new_rank, args.new_conv_rank, args.dynamic_method,
                                     args.dynamic_param, str(args.model))
    if args.verbose:
        for result in results:
            print(rerank.describe(result))
    alphas = {f"{float(g['alpha']):g}" for g in resized.values()}
    details = {"from": metadata.get("ss_network_dim", "?"), "new_rank": args.new_rank}
    if args.new_conv_rank:
        details["new_conv_rank"] = args.new_conv_rank
    if args.dynamic_method:
        details.update(dynamic_method=args.dynamic_method, dynamic_param=args.dynamic_param)
    meta = derived_metadata(metadata, "resize", details, ss_network_module="networks.lora",
                            ss_network_dim=ranks_summary(r.new_rank for r in results),
                            ss_network_alpha=alphas.pop() if len(alphas) == 1 else "Dynamic")
    dtype = save_dtype(args.save_precision) or (dtypes.pop() if len(dtypes) == 1 else None)
    save_lora(args.save_to, {k: v.cpu() for k, v in flatten_groups(resized).items()}, meta, dtype)
    print(f"wrote {args.save_to}: {rerank.summary(results)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
