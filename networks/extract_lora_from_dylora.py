"""Cut a DyLoRA file (networks.dylora) to fixed-rank LoRA files.

    python networks/extract_lora_from_dylora.py --model dy.safetensors --save_to out.safetensors --unit 4
        -> out-0004.safetensors, out-0008.safetensors, ... (every multiple of unit below the full rank)
    python networks/extract_lora_from_dylora.py --model dy.safetensors --save_to out.safetensors --rank 8
        -> out.safetensors at rank 8

A rank-r cut keeps the first r rows of lora_down and columns of lora_up, and writes
alpha * r / dim so that alpha/r equals the alpha/dim DyLoRA trained every prefix with.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from library.entry import run_cli  # noqa: E402

from library.errors import UserError  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="DyLoRA .safetensors file to cut")
    parser.add_argument("--save_to", required=True, help="output .safetensors (with --unit: -<rank:04d> is appended)")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--unit", type=int, help="write every multiple of this rank below the full rank")
    group.add_argument("--rank", type=int, help="write this one rank")
    parser.add_argument("--save_precision", choices=["float", "fp16", "bf16"], default=None,
                        help="dtype of the saved tensors (default: as in the input)")
    return parser


def max_rank(state_dict: dict) -> int:
    ranks = {v.shape[0] for k, v in state_dict.items() if k.endswith("lora_down.weight")}
    if not ranks:
        raise UserError("the file has no lora_down weights; it is not a DyLoRA/LoRA file")
    if len(ranks) > 1:
        raise UserError(f"modules have different ranks {sorted(ranks)}; a DyLoRA file has one rank")
    return ranks.pop()


def cut_to_rank(state_dict: dict, rank: int) -> dict:
    """The first `rank` ranks of every module, alpha rescaled to keep alpha/rank."""
    full = max_rank(state_dict)
    if not 0 < rank <= full:
        raise UserError(f"rank {rank} is outside 1..{full}")
    out = {}
    for key, value in state_dict.items():
        if key.endswith("lora_down.weight"):
            out[key] = value[:rank].contiguous()
        elif key.endswith("lora_up.weight"):
            out[key] = value[:, :rank].contiguous()
        elif key.endswith(".alpha"):
            out[key] = (value.float() * rank / full).to(value.dtype)
        else:
            raise UserError(f"unexpected key {key} in a DyLoRA file")
    return out


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from library.lora.file_io import read_lora, save_dtype, save_lora

    state_dict, metadata = read_lora(args.model)
    full = max_rank(state_dict)
    if args.rank is not None:
        targets = [(args.rank, Path(args.save_to))]
    else:
        if args.unit < 1 or full % args.unit:
            raise UserError(f"--unit {args.unit} does not divide the DyLoRA rank {full}")
        stem = Path(args.save_to)
        targets = [(r, stem.with_name(f"{stem.stem}-{r:04d}{stem.suffix}")) for r in range(args.unit, full, args.unit)]
    for rank, path in targets:
        cut = cut_to_rank(state_dict, rank)
        meta = {k: v for k, v in metadata.items() if not k.startswith("sshs_")}
        meta["ss_network_dim"] = str(rank)
        if "ss_network_alpha" in meta:
            try:
                meta["ss_network_alpha"] = str(float(meta["ss_network_alpha"]) * rank / full)
            except ValueError:
                pass
        meta["ss_network_module"] = "networks.lora"
        meta["ss_network_args"] = json.dumps({"extracted_from_dylora_rank": full})
        save_lora(path, cut, meta, save_dtype(args.save_precision))
        print(f"rank {rank}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
