"""Inspect an SDXL LoRA file: every key's shape, dtype and magnitude, and modules that never trained.

    python networks/check_lora_weights.py my_lora.safetensors [--summary_only]

Per key: shape, dtype, mean |x| and max |x|. Per module: algorithm (lora, loha, lokr, full, +dora),
rank and the Frobenius norm of its delta weight (alpha/rank applied). A module whose delta is all
zero is flagged as untrained: the zero-initialised factor (lora_up, LoHa's or LoKr's second
factor) never moved, which happens when a learning rate is 0 or a block was frozen. The summary
line counts modules by algorithm and lists the untrained ones.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from library.entry import run_cli  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", help="LoRA .safetensors file")
    parser.add_argument("--summary_only", action="store_true", help="print only the per-module lines and summary")
    return parser


def module_report(name: str, group: dict) -> tuple[str, float | None, int | None]:
    """(algorithm, delta Frobenius norm or None if the shape cannot be known, rank or None)."""
    import torch

    from library.lora import svd, weights_math
    from library.lora.lora_files import algo_of

    algo = algo_of(group)
    rank = None
    for key in ("lora_down.weight", "hada_w1_b", "lokr_w2_b", "lokr_w1_b"):
        if key in group:
            rank = group[key].shape[0]
            break
    try:
        delta = weights_math.delta_weight(group, svd.weight_shape(name, group))
        norm = float(torch.linalg.vector_norm(delta))
    except weights_math.UnsupportedGroupError:
        norm = None
    return algo, norm, rank


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from library.lora.lora_files import read_groups

    groups, _ = read_groups(args.file)
    algos, untrained = Counter(), []
    for name in sorted(groups):
        group = groups[name]
        if not args.summary_only:
            for suffix in sorted(group):
                t = group[suffix].float()
                dtype = str(group[suffix].dtype).replace("torch.", "")
                print(f"  {name}.{suffix}: shape {tuple(group[suffix].shape)} {dtype} "
                      f"mean|x| {t.abs().mean().item():.3e} max|x| {t.abs().max().item():.3e}")
        algo, norm, rank = module_report(name, group)
        algos[algo] += 1
        flag = ""
        if norm == 0.0:
            untrained.append(name)
            flag = "  UNTRAINED (delta is zero)"
        norm_text = f"{norm:.4e}" if norm is not None else "n/a"
        print(f"{name}: {algo} rank {rank if rank is not None else '-'} |dW| {norm_text}{flag}")
    kinds = ", ".join(f"{count} {algo}" for algo, count in sorted(algos.items()))
    print(f"{args.file}: {len(groups)} modules ({kinds}); {len(untrained)} untrained")
    for name in untrained:
        print(f"  untrained: {name}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
