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

from library.diagnostics.benchmark.process_memory import malloc_trim, reset_peak, status_kib

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
    from library.training.memory.memory_estimate import estimate_memory

    return estimate_memory(resolve_config(["--config_file", params["config"]]).args).as_dict()


# --- the section -----------------------------------------------------------------------------------
