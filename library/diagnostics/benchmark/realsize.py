"""The real SDXL size on this machine (`tools/bench.py --sections realsize`; never in the test suite).

Two random-weight checkpoints with the real SDXL 1.0 architecture (library/diagnostics/benchmark/real_size_model.py):
  - the full model in fp16 (6.9 GB, like sd_xl_base_1.0.safetensors): the peak memory of loading
    it for a bf16 run, as the trainer did before (every tensor to fp32, then to bf16 when placed)
    and as it does now (each tensor read straight into bf16);
  - the real UNet and VAE in fp32 with one-layer text encoders of the real widths (the encoders
    only encode the captions once: their outputs are cached), for training runs: fp32 (bf16 has no
    fast kernels on a CPU without AVX-512 BF16/AMX), LoRA rank 4, AdamW, batch 1, gradient
    checkpointing, cached latents and text outputs. Each run reports s/step, the memory a step adds
    to the process (RssAnon, library/diagnostics/benchmark/process_memory.py) and --estimate_memory's figure.
Plus --estimate_memory alone at 1024 px in bf16 (the 12 GB-card configuration).
"""
from __future__ import annotations

import time
from pathlib import Path

from library.diagnostics.benchmark import training
from library.diagnostics.benchmark.process_memory import TRACKING_MALLOC_ENV, malloc_trim, reset_peak, status_kib
from library.diagnostics.benchmark.runner import run_task

GIB = 1024 ** 3


def model_paths(workdir: Path) -> tuple[Path, Path]:
    import torch

    from library.diagnostics.benchmark.real_size_model import write_real_size_model

    folder = Path(workdir) / "models"
    full = write_real_size_model(folder / "sdxl_real_random_fp16.safetensors", torch.float16)
    training_file = write_real_size_model(folder / "sdxl_real_unet_fp32_te1layer.safetensors", torch.float32, text_encoder_layers=1)
    return full, training_file


# --- workers -------------------------------------------------------------------------------------
def run_load_memory(params: dict) -> dict:
    """Peak RSS (VmHWM) and anonymous memory of loading the model for a run storing `params["dtype"]`:
    `direct` reads each tensor into that dtype; otherwise fp32 first, then converted (what the trainer
    did before); `mapped` converts from the whole memory-mapped file (the reader before)."""
    import torch

    from library.models.sdxl_loader import load_sdxl

    dtype = getattr(torch, params["dtype"])
    if params.get("mapped"):  # the previous reader: convert from the memory-mapped file
        from library.models import sdxl_single_file

        sdxl_single_file._TensorSource._read_as = lambda self, key, dtype: None
    malloc_trim()
    reset_peak()
    before = status_kib()
    started = time.perf_counter()
    if params["direct"]:
        model = load_sdxl(params["model"], dtypes={"unet": dtype, "text_encoder": dtype, "vae": dtype})
    else:
        model = load_sdxl(params["model"])
        for module in (model.unet, *model.text_encoders, model.vae):
            module.to(dtype=dtype)
    seconds = time.perf_counter() - started
    after = status_kib()
    held = sum(t.numel() * t.element_size() for m in (model.unet, *model.text_encoders, model.vae) for t in m.state_dict().values())
    return {"peak_rss": (after["VmHWM"] - before["VmRSS"]) * 1024, "rss_after": (after["VmRSS"] - before["VmRSS"]) * 1024,
            "anon_after": (after["RssAnon"] - before["RssAnon"]) * 1024, "weight_bytes": held, "seconds": seconds}


def run_estimate(params: dict) -> dict:
    from library.training.config.config_loader import resolve_config
    from library.diagnostics.memory_estimate import estimate_memory

    return estimate_memory(resolve_config(["--config_file", params["config"]]).args).as_dict()


# --- the section -----------------------------------------------------------------------------------
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
