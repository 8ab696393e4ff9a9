"""Benchmark training speed, memory and data preparation; print a table and write a JSON report.

    python tools/bench.py                         # tiny and small, 3 interleaved repeats
    python tools/bench.py --sizes tiny --repeats 1 --quick
    python tools/bench.py --sdxl /models/sd_xl_base_1.0.safetensors --resolution 1024 --batch_size 1
    python tools/bench.py --sections realsize     # the real SDXL architecture, random weights (~1 hour here)
    python tools/bench.py --sections efficiency   # FLOP/s of the step vs the GEMM rate, 1 and 2 threads
    python tools/bench.py --sections learning     # does each network type learn the toy world's concept?
    python tools/bench.py --sections peer --peer_script train_dreambooth_lora_sdxl_advanced.py --peer_python venv/bin/python
                                                  # diffusers' own SDXL LoRA script side by side (docs/performance.md)
    python tools/bench.py --sections kohya --kohya_dir sd-scripts --kohya_python kohya-venv/bin/python --threads 2
                                                  # kohya's own trainer, real SDXL size, same command line (~1 h)

Every variant runs in its own process; compared variants alternate (ours, reference, ours, ...)
and the report gives medians, per-pair ratios and spreads. On a shared machine run-to-run spread
of 20-30% is normal: compare ratios, not absolute times. See docs/performance.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from library.entry import run_cli  # noqa: E402

from library.errors import UserError  # noqa: E402

DEFAULT_CASES = [
    {"resolution": 256, "batch_size": 2, "gradient_checkpointing": False},
    {"resolution": 256, "batch_size": 2, "gradient_checkpointing": True},
    {"resolution": 384, "batch_size": 1, "gradient_checkpointing": False},
    {"resolution": 128, "batch_size": 4, "gradient_checkpointing": True},
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"], choices=["tiny", "small"], help="generated model sizes")
    parser.add_argument("--sdxl", default=None, help="also benchmark this real SDXL checkpoint (file or diffusers folder)")
    parser.add_argument("--resolution", type=int, default=256, help="training resolution (square), default 256")
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank (network_dim)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats of each comparison")
    parser.add_argument("--steps", type=int, default=5, help="measured optimizer steps per run (after warm-up)")
    parser.add_argument("--warmup", type=int, default=2, help="steps not measured at the start of each run")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads in every run (default 1: stable on shared machines; 0 = torch's choice)")
    parser.add_argument("--index_images", type=int, default=10000, help="images generated for the indexing benchmark")
    parser.add_argument("--caching_images", type=int, default=16, help="images for the latent-caching benchmark")
    parser.add_argument("--caching_size", default="small", choices=["tiny", "small"])
    parser.add_argument("--text_caching_size", default="real", choices=["tiny", "small", "real"],
                        help="text encoders for the text-encoder caching benchmark (real: SDXL's, random weights)")
    parser.add_argument("--text_caching_images", type=int, default=32, help="captions for the text-encoder caching benchmark")
    parser.add_argument("--text_caching_dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--calibration_sizes", nargs="*", default=["small"], choices=["tiny", "small"],
                        help="model sizes whose --estimate_memory is checked against allocated bytes")
    parser.add_argument("--quick", action="store_true", help="one calibration case, 1 memory repeat (for tests)")
    parser.add_argument("--in_process", action="store_true",
                        help="run every task in this process (fast check of the report; memory/start-up figures not meaningful)")
    parser.add_argument("--sections", nargs="+", default=None, choices=["training", "startup", "calibration", "preparation", "hardware", "efficiency", "realsize", "learning", "peer", "kohya"],
                        help="measure only these sections (default: all but hardware, efficiency, realsize, learning, peer and kohya, which run only when named)")
    parser.add_argument("--peer_script", default=None,
                        help="peer section: diffusers' examples/advanced_diffusion_training/train_dreambooth_lora_sdxl_advanced.py")
    parser.add_argument("--peer_python", default=None,
                        help="peer section: the interpreter that runs the script (needs torchvision; default: this one)")
    parser.add_argument("--kohya_dir", default=None, help="kohya section: a copy of kohya-ss/sd-scripts (docs/performance.md)")
    parser.add_argument("--kohya_python", default=None, help="kohya section: the interpreter of kohya's venv")
    parser.add_argument("--kohya_precisions", nargs="+", default=["no", "bf16"], choices=["no", "fp16", "bf16"],
                        help="kohya section: mixed_precision values to compare (default: no bf16)")
    parser.add_argument("--kohya_steps", nargs=2, type=int, default=[3, 6], metavar=("SHORT", "LONG"),
                        help="kohya section: steps of the short and the long run (default 3 6)")
    parser.add_argument("--algorithms", nargs="+", default=None, help="learning section: which networks (default: "
                        "LoRA LoCon LoHa LoKr DyLoRA pivotal)")
    parser.add_argument("--toy_world", default=None,
                        help="learning section: the toy world folder (built there when missing; default WORKDIR/toy_world)")
    parser.add_argument("--realsize_resolutions", nargs="*", type=int, default=[256, 512],
                        help="realsize: training resolutions on the real SDXL architecture (1024 needs ~14 GB and ~10 min a step here)")
    parser.add_argument("--update", default=None,
                        help="start from this JSON report and replace only the sections measured now (with --sections)")
    parser.add_argument("--workdir", default=None, help="where models, images and caches are kept (reused between runs)")
    parser.add_argument("--output", default=None, help="write the JSON report here (default: print it)")
    return parser


def main(argv=None) -> int:
    from library.diagnostics.benchmark.report import format_table, validate_report
    from library.diagnostics.benchmark.suite import has_checkable_sections, run_benchmark

    from library.diagnostics.benchmark import runner

    args = build_parser().parse_args(argv)
    if args.algorithms:
        from tools.toy_world.learning import ALGORITHMS

        unknown = [name for name in args.algorithms if name not in ALGORITHMS]
        if unknown:
            raise UserError(f"--algorithms {' '.join(unknown)}: unknown; choose from {' '.join(ALGORITHMS)}")
    if args.sections and "kohya" in args.sections and not (args.kohya_dir and args.kohya_python):
        raise UserError("--sections kohya needs --kohya_dir (a copy of kohya-ss/sd-scripts) and --kohya_python (its venv's "
                        "interpreter); docs/performance.md says how to make both")
    if args.sections and "peer" in args.sections and not args.peer_script:
        raise UserError("--sections peer needs --peer_script PATH (diffusers' train_dreambooth_lora_sdxl_advanced.py; "
                        "docs/performance.md says where to get it)")
    runner.THREADS = args.threads or None
    runner.ISOLATED = not args.in_process
    opts = {"sizes": args.sizes, "sdxl": args.sdxl, "resolution": args.resolution, "batch_size": args.batch_size, "rank": args.rank,
            "repeats": args.repeats, "steps": args.steps, "warmup": args.warmup, "threads": args.threads,
            "memory_repeats": 1 if args.quick else max(1, min(args.repeats, 2)), "index_images": args.index_images,
            "caching_images": args.caching_images, "caching_size": args.caching_size,
            "text_caching_size": args.text_caching_size, "text_caching_images": args.text_caching_images,
            "text_caching_dtype": args.text_caching_dtype,
            "calibration_sizes": args.calibration_sizes, "calibration_cases": DEFAULT_CASES[:1] if args.quick else DEFAULT_CASES,
            "target_size": "small" if "small" in args.sizes else args.sizes[0], "isolated": not args.in_process,
            "sections": args.sections, "realsize_resolutions": args.realsize_resolutions, "algorithms": args.algorithms, "toy_world": args.toy_world,
            "peer_script": args.peer_script, "peer_python": args.peer_python, "kohya_dir": args.kohya_dir,
            "kohya_python": args.kohya_python, "kohya_precisions": args.kohya_precisions, "kohya_steps": tuple(args.kohya_steps), "previous": json.loads(Path(args.update).read_text(encoding="utf-8")) if args.update else None}
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.gettempdir()) / "sdxl_lora_bench"
    report = run_benchmark(opts, workdir, log=lambda message: print(message, file=sys.stderr, flush=True))
    if has_checkable_sections(report):  # not hardware-only
        validate_report(report)
    text = json.dumps(report, indent=2)
    if args.output:
        Path(args.output).write_text(text + "\n", encoding="utf-8")
    else:
        print(text)
    print(format_table(report), file=sys.stderr if not args.output else sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
