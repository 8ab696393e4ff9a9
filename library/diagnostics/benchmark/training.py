"""Training-step benchmarks, each run in its own process (so memory and start-up are its own):

  ours       sdxl_train_network's Trainer.run() on a generated dataset, timed per optimizer step
  reference  a minimal loop: diffusers UNet, a plain LoRA on the same modules, AdamW, and the
             latents and text conditioning our run cached to disk
  startup    sdxl_train_network.main() from process start to the first optimizer step, and the
             time a fresh process takes just to import the modules that run loaded
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import toml

from library.diagnostics.benchmark.measure import PeakRSS, peak_rss_since_start, process_age_seconds, rss_bytes

IMAGES = 8


def prepare_dataset(folder: Path, resolution: int, count: int = IMAGES) -> Path:
    """`count` generated images of one bucket (resolution x resolution) with captions, in 1_bench/."""
    from library.data.demo_images import make_concept_images

    train_dir = Path(folder) / f"images_{resolution}"
    subset = train_dir / "1_bench"
    if not subset.exists():
        make_concept_images(subset, count=count, caption="bench concept, 1girl, night sky",
                            sizes=[(resolution, resolution)])
    return train_dir


def training_config(model: Path, train_dir: Path, output_dir: Path, resolution: int, batch_size: int, rank: int,
                    steps: int, gradient_checkpointing: bool = False, cache_text: bool = True, seed: int = 1) -> dict:
    """The benchmark's training config (kohya sections): UNet-only LoRA, cached latents on disk."""
    sdxl = {"cache_text_encoder_outputs": True, "cache_text_encoder_outputs_to_disk": True} if cache_text else {}
    return {
        "sdxl_arguments": sdxl,
        "model_arguments": {"pretrained_model_name_or_path": str(model)},
        "dataset_arguments": {"train_data_dir": str(train_dir), "resolution": f"{resolution},{resolution}",
                              "cache_latents": True, "cache_latents_to_disk": True},
        "training_arguments": {"output_dir": str(output_dir), "output_name": "bench_lora", "train_batch_size": batch_size,
                               "max_train_steps": steps, "seed": seed, "max_data_loader_n_workers": 0,
                               "gradient_checkpointing": gradient_checkpointing, "mixed_precision": "no"},
        "optimizer_arguments": {"optimizer_type": "AdamW", "learning_rate": 1e-4},
        "additional_network_arguments": {"network_module": "networks.lora", "network_dim": rank, "network_alpha": rank / 2,
                                         "network_train_unet_only": True},
    }


def write_config(path: Path, config: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(toml.dumps(config), encoding="utf-8")
    return path


# --- workers (run inside the child process) ------------------------------------------------------
def _step_times(marks: list[float], warmup: int) -> list[float]:
    return [b - a for a, b in zip(marks[warmup:], marks[warmup + 1:])]


def run_ours(params: dict) -> dict:
    """Trainer.run() with every optimizer step time-stamped; RSS sampled during the training phase."""
    import torch

    from library.training.config.config_loader import resolve_config
    from library.training.loop import Trainer

    if params.get("threads"):
        torch.set_num_threads(params["threads"])
    resolved = resolve_config(["--config_file", params["config"]])
    trainer = Trainer(resolved)
    trainer.setup()
    marks, first = [], []
    step = trainer.optimizer_step

    def timed_step():
        logs = step()
        marks.append(time.perf_counter())
        if not first:
            first.append(process_age_seconds())
        return logs

    trainer.optimizer_step = timed_step  # instance attribute: run_epoch calls it unchanged
    before = rss_bytes()
    with PeakRSS() as sampler:
        marks.append(time.perf_counter())
        trainer.run()
    return {"step_times": _step_times(marks, params["warmup"]), "rss_before_training": before,
            "peak_rss_training": sampler.peak, "peak_rss_process": peak_rss_since_start(),
            "start_to_first_step": first[0] if first else None,
            "text_encoders_loaded": _text_encoders_resident(trainer.model)}


def _text_encoders_resident(model) -> bool:
    """Whether the text encoders still hold real (non-meta) weights."""
    return any(p.device.type != "meta" for encoder in model.text_encoders for p in encoder.parameters())


class PlainLoRA:
    """The reference LoRA: up(down(x)) * alpha/r added to a frozen Linear or 1x1 Conv2d."""

    @staticmethod
    def wrap(module, rank: int, alpha: float):
        from torch import nn

        class Wrapped(nn.Module):
            def __init__(self, base):
                super().__init__()
                self.base = base
                if isinstance(base, nn.Linear):
                    self.down = nn.Linear(base.in_features, rank, bias=False)
                    self.up = nn.Linear(rank, base.out_features, bias=False)
                else:
                    self.down = nn.Conv2d(base.in_channels, rank, 1, bias=False)
                    self.up = nn.Conv2d(rank, base.out_channels, 1, bias=False)
                nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
                nn.init.zeros_(self.up.weight)
                self.scale = alpha / rank

            def forward(self, x):
                return self.base(x) + self.up(self.down(x)) * self.scale

        return Wrapped(module)

    @staticmethod
    def apply(unet, rank: int, alpha: float) -> list:
        """Wrap every Linear and 1x1 conv inside the UNet's Transformer2DModel blocks (kohya's targets)."""
        from torch import nn

        targets = []
        for name, block in unet.named_modules():
            if type(block).__name__ != "Transformer2DModel":
                continue
            for child_name, child in block.named_modules():
                if isinstance(child, nn.Linear) or (isinstance(child, nn.Conv2d) and child.kernel_size == (1, 1)):
                    targets.append(f"{name}.{child_name}")
        params = []
        for path in targets:
            parent_path, _, leaf = path.rpartition(".")
            parent = unet.get_submodule(parent_path)
            wrapped = PlainLoRA.wrap(getattr(parent, leaf), rank, alpha)
            setattr(parent, leaf, wrapped)
            params += [wrapped.down.weight, wrapped.up.weight]
        return params


def load_cached_inputs(train_dir: Path):
    """Latents (unscaled) and text conditioning from the npz caches our run wrote."""
    import numpy as np
    import torch

    latents, contexts, pooled = [], [], []
    for te_file in sorted(Path(train_dir).rglob("*_te_outputs.npz")):
        stem = te_file.name[: -len("_te_outputs.npz")]
        latent_file = next(te_file.parent.glob(f"{stem}_*_sdxl.npz"))
        with np.load(latent_file) as npz:
            latents.append(torch.from_numpy(npz["latents"].astype(np.float32)))
        with np.load(te_file) as npz:
            contexts.append(torch.from_numpy(np.concatenate([npz["hidden_state1"], npz["hidden_state2"]], axis=-1)))
            pooled.append(torch.from_numpy(npz["pool2"].astype(np.float32)))
    if not latents:
        raise RuntimeError(f"{train_dir}: no cached latents/text outputs; run our trainer once first")
    return latents, contexts, pooled


def run_reference(params: dict) -> dict:
    import gc

    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler

    from library.models.sdxl_architecture import VAE_SCALE_FACTOR_SDXL
    from library.models.sdxl_loader import load_sdxl

    if params.get("threads"):
        torch.set_num_threads(params["threads"])
    model = load_sdxl(params["model"])
    unet = model.unet
    del model
    gc.collect()
    unet.requires_grad_(False)
    if params["gradient_checkpointing"]:
        unet.enable_gradient_checkpointing()
    unet.train()
    lora_params = PlainLoRA.apply(unet, params["rank"], params["rank"] / 2)
    for p in lora_params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(lora_params, lr=1e-4)
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
    latents, contexts, pooled = load_cached_inputs(Path(params["train_dir"]))
    resolution, batch = params["resolution"], params["batch_size"]
    ids = torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]] * batch, dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    total = params["warmup"] + params["steps"]
    marks = []
    before = rss_bytes()
    first = None
    with PeakRSS() as sampler:
        marks.append(time.perf_counter())
        for step in range(total):
            rows = [(step * batch + k) % len(latents) for k in range(batch)]
            x0 = torch.stack([latents[r] for r in rows]) * VAE_SCALE_FACTOR_SDXL
            noise = torch.randn(x0.shape, generator=generator)
            t = torch.randint(0, 1000, (batch,), generator=generator)
            noisy = scheduler.add_noise(x0, noise, t)
            prediction = unet(noisy, t, torch.stack([contexts[r] for r in rows]),
                              added_cond_kwargs={"text_embeds": torch.stack([pooled[r] for r in rows]), "time_ids": ids}).sample
            loss = F.mse_loss(prediction.float(), noise)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss.item()
            marks.append(time.perf_counter())
            if first is None:
                first = process_age_seconds()
    return {"step_times": _step_times(marks, params["warmup"]), "rss_before_training": before,
            "peak_rss_training": sampler.peak, "peak_rss_process": peak_rss_since_start(), "start_to_first_step": first,
            "lora_tensors": len(lora_params)}


def run_startup(params: dict) -> dict:
    """main() of sdxl_train_network from process start to the first optimizer step."""
    import sys

    from library.training import loop as trainer_module

    original = trainer_module.Trainer.optimizer_step
    first = []

    def timed(self):
        logs = original(self)
        if not first:
            first.append(process_age_seconds())
        return logs

    trainer_module.Trainer.optimizer_step = timed
    from sdxl_train_network import main

    try:
        main(["--config_file", params["config"]])
    finally:
        trainer_module.Trainer.optimizer_step = original
    modules = [name for name in sys.modules if not name.startswith(("library.diagnostics.benchmark", "__main__"))]
    Path(params["modules_file"]).write_text(json.dumps(modules), encoding="utf-8")
    return {"start_to_first_step": first[0] if first else None, "modules": len(modules)}


def run_imports(params: dict) -> dict:
    """Import (in the original order) every module the startup run had loaded; time since process start."""
    import importlib

    names = json.loads(Path(params["modules_file"]).read_text(encoding="utf-8"))
    failed = 0
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # a few private modules cannot be imported on their own
            failed += 1
    return {"import_seconds": process_age_seconds(), "modules": len(names), "failed": failed}
