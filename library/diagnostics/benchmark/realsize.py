"""The real-size section's orchestration (`tools/bench.py --sections realsize`): the runs of
realsize_tasks.py, each in a fresh process, and what they are compared with."""
from __future__ import annotations

import time
from pathlib import Path

from library.diagnostics.benchmark import training
from library.diagnostics.benchmark.process_memory import TRACKING_MALLOC_ENV
from library.diagnostics.benchmark.realsize_tasks import GIB, model_paths
from library.diagnostics.benchmark.runner import run_task


def _config(workdir: Path, model: Path, resolution: int, steps: int, mixed: str = "no") -> Path:
    train_dir = training.prepare_dataset(workdir, resolution, count=1)
    config = training.training_config(model, train_dir, workdir / f"out_realsize_{resolution}", resolution, 1, 4, steps,
                                      gradient_checkpointing=True)
    config["training_arguments"]["mixed_precision"] = mixed
    return training.write_config(workdir / "configs" / f"realsize_{resolution}_{mixed}.toml", config)


def bench_realsize(workdir: Path, opts: dict, log=print) -> dict:
    workdir = Path(workdir)
    log("[realsize] writing the random-weight real-size checkpoints (once)")
    full, training_file = model_paths(workdir)
    result = {"model": str(full), "training_model": str(training_file), "loading": {}, "training": [], "estimate_only": []}
    # loading for a bf16 run, old and new way, interleaved
    loads = {"fp32_then_bf16": [], "direct_bf16": []}
    for repeat in range(opts.get("realsize_load_repeats", 1)):
        for name, direct in (("fp32_then_bf16", False), ("direct_bf16", True)):
            log(f"[realsize] loading {name} ({repeat + 1})")
            loads[name].append(run_task("load_memory", {"model": str(full), "dtype": "bfloat16", "direct": direct}))
    result["loading"] = loads
    for resolution in opts.get("realsize_resolutions", [256, 512]):
        log(f"[realsize] training {resolution} px, fp32, checkpointing, rank 4, batch 1")
        config = _config(workdir, training_file, resolution, opts.get("realsize_steps", 3))
        started = time.time()
        measured = run_task("calibration", {"config": str(config), "count_tensors": True}, timeout=7200, env=TRACKING_MALLOC_ENV)
        log(f"[realsize] again with glibc's default malloc ({resolution} px)")
        default = run_task("calibration", {"config": str(config)}, timeout=7200)
        estimate = measured["estimate"]
        result["training"].append({
            "resolution": resolution, "batch_size": 1, "rank": 4, "precision": "fp32", "gradient_checkpointing": True,
            "step_seconds": measured["step_seconds"], "step_added_bytes": measured["step_added"],
            "steps": measured["steps"], "tensor_peak_bytes": measured["tensor_peak"],
            "estimated_working_bytes": measured["estimated_working"], "ratio": measured["ratio"],
            "step_added_default_malloc_bytes": default["step_added"], "step_seconds_default_malloc": default["step_seconds"],
            "estimated_total_bytes": estimate["accelerator_total"], "estimate": estimate, "wall_seconds": time.time() - started})
    for resolution in opts.get("realsize_estimate_resolutions", [1024]):
        config = _config(workdir, full, resolution, 1, mixed="bf16")
        estimate = run_task("estimate", {"config": str(config)})
        result["estimate_only"].append({"resolution": resolution, "precision": "bf16", "batch_size": 1, "gradient_checkpointing": True,
                                        "estimated_total_bytes": estimate["accelerator_total"], "estimate": estimate,
                                        "fits_12_gb": estimate["accelerator_total"] <= 12 * GIB})
    return result
