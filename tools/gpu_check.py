"""The GPU code paths checked on real hardware, in one command: `bash tools/gpu_check.sh`.

Builds the tiny and small SDXL-shaped models and a small image set, then trains each row in its
own process (a few optimizer steps, samples and validation on, latents and text-encoder outputs
cached) and prints one table: step time, peak CUDA memory against what --estimate_memory
predicted for the same config, and pass/fail. A row passes when training finished with finite
losses, wrote its sample, logged a finite validation loss and (on a GPU) its peak memory is within
25% of the estimate. Takes a few minutes on one GPU. Without CUDA the CPU rows run and every GPU
row says "skipped: no CUDA"; the two-GPU row needs two GPUs.

    bash tools/gpu_check.sh                  # everything this machine can run
    bash tools/gpu_check.sh --rows small-bf16 small-fp8_base --output report.json
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from library.entry import run_cli  # noqa: E402

from library.errors import UserError  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MEMORY_TOLERANCE = 0.25


@dataclass(frozen=True)
class Row:
    name: str
    size: str  # "tiny" or "small"
    options: dict = field(default_factory=dict)
    needs: str = "cuda"  # "cpu" (runs anywhere, on the CPU), "cuda", "xformers", "2 gpus"
    resolution: int = 256


ROWS = [
    Row("cpu-tiny-bf16", "tiny", {"mixed_precision": "bf16"}, needs="cpu", resolution=64),
    Row("cpu-tiny-fp16-full", "tiny", {"mixed_precision": "fp16", "full_fp16": True}, needs="cpu", resolution=64),
    Row("cpu-tiny-fp8_base", "tiny", {"mixed_precision": "bf16", "fp8_base": True}, needs="cpu", resolution=64),
    Row("tiny-fp16", "tiny", {"mixed_precision": "fp16"}, resolution=64),
    Row("tiny-bf16-full", "tiny", {"mixed_precision": "bf16", "full_bf16": True}, resolution=64),
    Row("small-fp16", "small", {"mixed_precision": "fp16"}),
    Row("small-fp16-full", "small", {"mixed_precision": "fp16", "full_fp16": True}),
    Row("small-bf16", "small", {"mixed_precision": "bf16"}),
    Row("small-bf16-xformers", "small", {"mixed_precision": "bf16", "xformers": True}, needs="xformers"),
    Row("small-fp8_base", "small", {"mixed_precision": "bf16", "fp8_base": True}),
    Row("small-torch_compile", "small", {"mixed_precision": "bf16", "torch_compile": True, "dynamo_backend": "inductor"}),
    Row("small-offload_checkpointing", "small", {"mixed_precision": "bf16", "cpu_offload_checkpointing": True}),
    Row("small-bf16-2gpus", "small", {"mixed_precision": "bf16", "ddp_check_sync": True}, needs="2 gpus"),
]


def family_rows() -> list[Row]:
    """One tiny row per GPU option family (tools/pretend_cuda/scenarios.py: the same families the suite
    runs on pretend CUDA), so a GPU shows what pretend CUDA cannot: kernels, memory and speed."""
    from tools.pretend_cuda.scenarios import SCENARIOS

    rows = []
    for name, scenario in SCENARIOS.items():
        if scenario.kind != "train":
            continue
        options = dict(scenario.options)
        trains_text = options.get("network_train_unet_only") is False or options.get("train_text_encoder_ti")
        if trains_text or name.startswith("uncached"):  # the benchmark config caches text outputs: not here
            options.update({"sdxl_arguments.cache_text_encoder_outputs": None, "sdxl_arguments.cache_text_encoder_outputs_to_disk": None})
        if options.get("cache_latents") is False:
            options.update({"dataset_arguments.cache_latents": None, "dataset_arguments.cache_latents_to_disk": None})
            options.pop("cache_latents")
        if scenario.data != "plain":
            options["data"] = scenario.data  # prepared by prepare_family_data
        rows.append(Row(f"family-{name}", "tiny", options, resolution=64))
    return rows


ROWS += family_rows()


def skip_reason(row: Row) -> str | None:
    import importlib.util

    import torch

    if row.needs == "cpu":
        return None
    if not torch.cuda.is_available():
        return "skipped: no CUDA"
    if row.needs == "xformers" and importlib.util.find_spec("xformers") is None:
        return "skipped: xformers not installed"
    if row.needs == "2 gpus" and torch.cuda.device_count() < 2:
        return f"skipped: {torch.cuda.device_count()} GPU"
    return None


def prepare(workdir: Path, rows: list[Row]) -> dict:
    from library.diagnostics.benchmark import training
    from library.diagnostics.benchmark.models import write_model

    workdir.mkdir(parents=True, exist_ok=True)
    prompts = workdir / "prompts.txt"
    prompts.write_text("bench concept, 1girl --w 64 --h 64 --s 4 --d 1\n", encoding="utf-8")
    return {"models": {size: write_model(size, workdir / "models") for size in {row.size for row in rows}}, "prompts": prompts,
            "data": {r: training.prepare_dataset(workdir, r) for r in {row.resolution for row in rows}}}


def family_data(kind: str, train_dir: Path) -> dict:
    """The options that point a family row at its data: loss masks, or a dataset config."""
    import numpy as np
    import toml
    from PIL import Image

    images = sorted((train_dir / "1_bench").glob("*.png"))
    if kind == "masks":
        masks = train_dir.parent / f"{train_dir.name}_masks"
        masks.mkdir(exist_ok=True)
        for image in images:
            width, height = Image.open(image).size
            Image.fromarray(np.tile(np.linspace(0, 255, width, dtype=np.uint8), (height, 1))).save(masks / image.name)
        return {"masked_loss": True, "conditioning_data_dir": str(masks)}
    subset = {"image_dir": str(train_dir / "1_bench"), "num_repeats": 1}
    dataset = {"resolution": Image.open(images[0]).size[0], "batch_size": 2, "subsets": [subset]}
    if kind == "preservation":
        subset["custom_attributes"] = {"diff_output_preservation": True}
    if kind == "multiplier":
        dataset["network_multiplier"] = 0.5
    path = train_dir.parent / f"{train_dir.name}_{kind}.toml"
    path.write_text(toml.dumps({"datasets": [dataset]}), encoding="utf-8")
    return {"dataset_config": str(path), "dataset_arguments.train_data_dir": None, "dataset_arguments.resolution": None}


def run_row(row: Row, prepared: dict, workdir: Path, steps: int) -> dict:
    from library.diagnostics.benchmark import training
    from library.diagnostics.benchmark.hardware_tasks import hardware_config
    from library.diagnostics.benchmark.runner import TaskFailed, run_task

    options = dict(row.options)
    kind = options.pop("data", None)
    if kind:
        options.update(family_data(kind, prepared["data"][row.resolution]))
    config = hardware_config(prepared["models"][row.size], prepared["data"][row.resolution], workdir / f"out_{row.name}",
                             row.resolution, steps, options, prepared["prompts"])
    path = training.write_config(workdir / "configs" / f"{row.name}.toml", config)
    started = time.perf_counter()
    if row.needs == "2 gpus":
        return run_two_processes(path, started)
    cpu = row.needs == "cpu"
    try:  # one CPU thread: on a small shared CPU a second intra-op thread costs more than it gives (tests/conftest.py)
        result = run_task("hardware", {"config": str(path), "threads": 1 if cpu else None}, timeout=1200,
                          env={"CUDA_VISIBLE_DEVICES": ""} if cpu else None)
    except TaskFailed as error:
        return {"error": str(error).splitlines()[-1][:200], "seconds": time.perf_counter() - started}
    result["seconds"] = time.perf_counter() - started
    return result


def run_two_processes(config: Path, started: float) -> dict:
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", str(ROOT / "sdxl_train_network.py"), "--config_file", str(config)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=1200)
    output = done.stdout + done.stderr
    in_sync = "ddp_check_sync: all 2 processes held identical network weights" in output
    return {"seconds": time.perf_counter() - started, "losses_finite": done.returncode == 0, "samples": 1, "validation": [0.0],
            "two_process_sync": in_sync, "error": None if done.returncode == 0 and in_sync else output.splitlines()[-1][:200]}


def verdict(row: Row, result: dict) -> tuple[bool, str]:
    if result.get("error"):
        return False, result["error"]
    problems = []
    if not result.get("losses_finite"):
        problems.append("non-finite loss")
    if not result.get("samples"):
        problems.append("no sample")
    if not result.get("validation") or not all(math.isfinite(v) for v in result["validation"]):
        problems.append("no finite validation loss")
    peak, estimate = result.get("peak_cuda_bytes"), result.get("estimate_bytes")
    if peak and estimate and abs(peak / estimate - 1) > MEMORY_TOLERANCE:
        problems.append(f"peak memory {peak / estimate:.2f}x the estimate")
    return not problems, "; ".join(problems)


def mib(value) -> str:
    return f"{value / 2**20:,.0f}" if value else "-"


def table(rows: list[tuple[Row, dict | None, str | None]]) -> str:
    width = max([30] + [len(row.name) + 1 for row, _, _ in rows])
    header = f"{'row':<{width}} {'device':<7} {'first step s':>12} {'step s':>8} {'peak MiB':>9} {'estimate MiB':>12} {'ratio':>6}  result"
    lines = [header, "-" * len(header)]
    for row, result, skipped in rows:
        if skipped:
            lines.append(f"{row.name:<{width}} {'-':<7} {'':>12} {'':>8} {'':>9} {'':>12} {'':>6}  {skipped}")
            continue
        ok, why = verdict(row, result)
        peak, estimate = result.get("peak_cuda_bytes"), result.get("estimate_bytes")
        ratio = f"{peak / estimate:.2f}" if peak and estimate else "-"
        first = f"{result['first_step_seconds']:.2f}" if result.get("first_step_seconds") else "-"
        step = f"{result['step_seconds']:.3f}" if result.get("step_seconds") else f"{result['seconds']:.0f} total"
        device = (result.get("device") or ("cuda" if row.needs == "2 gpus" else "-")).split(":")[0]
        lines.append(f"{row.name:<{width}} {device:<7} {first:>12} {step:>8} {mib(peak):>9} {mib(estimate):>12} {ratio:>6}  "
                     + ("pass" if ok else f"FAIL: {why}"))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", default=None, choices=[r.name for r in ROWS], help="run only these rows")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per row (default 6)")
    parser.add_argument("--workdir", default=None, help="folder for models, images and outputs (default: a temporary one)")
    parser.add_argument("--output", default=None, help="also write the results as JSON here")
    parser.add_argument("--kohya_dir", default=None,
                        help="also run the benchmark's kohya section (kohya's own trainer, real SDXL size) with this copy of sd-scripts")
    parser.add_argument("--kohya_python", default=None, help="the interpreter of kohya's venv (with --kohya_dir)")
    return parser


def run_kohya_section(args) -> dict:
    """tools/bench.py's kohya section on this machine (on a GPU both trainers train on it), its table printed."""
    from library.diagnostics.benchmark.peers.kohya import bench_kohya
    from library.diagnostics.benchmark.peers.kohya_report import kohya_lines

    if not args.kohya_python:
        raise UserError("--kohya_dir needs --kohya_python (the interpreter of kohya's venv; docs/performance.md)")
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="gpu_check_kohya_"))
    section = bench_kohya(workdir, {"kohya_dir": args.kohya_dir, "kohya_python": args.kohya_python, "repeats": 2, "threads": None},
                          log=lambda message: print(message, flush=True))
    print("\n".join(kohya_lines(section)))
    return section


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.steps < 2:
        raise UserError("--steps must be at least 2 (the first step is timed apart)")
    rows = [r for r in ROWS if args.rows is None or r.name in args.rows]
    planned = [(row, skip_reason(row)) for row in rows]
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as temporary:
        workdir = Path(args.workdir or temporary)
        runnable = [row for row, skipped in planned if not skipped]
        prepared = prepare(workdir, runnable) if runnable else {}
        results = []
        for row, skipped in planned:
            if skipped:
                results.append((row, None, skipped))
                continue
            print(f"[gpu_check] {row.name} ...", flush=True)
            results.append((row, run_row(row, prepared, workdir, args.steps), None))
    print(table(results))
    kohya = run_kohya_section(args) if args.kohya_dir else None
    if args.output:
        report = {row.name: {"skipped": skipped, **(result or {})} for row, result, skipped in results}
        if kohya:
            report["kohya"] = kohya
        Path(args.output).write_text(json.dumps(report, indent=1), encoding="utf-8")
    failed = [row.name for row, result, skipped in results if not skipped and not verdict(row, result)[0]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
