"""One training run measured for the hardware checks (tools/gpu_check.py) and the precision figures
of docs/performance.md: step times (the first one apart: it compiles, when torch_compile is on),
losses, validation losses, samples written, UNet weight bytes, peak CUDA memory and what
--estimate_memory predicted for the same config.

`run_hardware` runs inside a fresh process (library/diagnostics/benchmark/worker.py), so peak memory is the
run's own.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

from library.diagnostics.benchmark import training


def hardware_config(model: Path, train_dir: Path, output_dir: Path, resolution: int, steps: int, options: dict,
                    prompts: Path | None = None) -> dict:
    """The benchmark config plus samples and validation (when `prompts`) and the row's options."""
    config = training.training_config(model, train_dir, output_dir, resolution, 2, 8, steps)
    config["logging_arguments"] = {}
    if prompts is not None:
        config["sample_prompt_arguments"] = {"sample_prompts": str(prompts), "sample_every_n_steps": max(1, steps - 1)}
        config["training_arguments"].update(validation_split=0.25, validate_every_n_steps=steps)
    for key, value in options.items():
        if "." in key:  # "section.key": that section's key (None removes it)
            section, key = key.split(".", 1)
            config.setdefault(section, {})
            if value is None:
                config[section].pop(key, None)
                continue
            config[section][key] = value
            continue
        section = next((name for name, table in config.items() if key in table), None)
        if section is None:
            from library.training.config.options import OPTIONS

            section = OPTIONS[key].section if key in OPTIONS else "training_arguments"
        config.setdefault(section, {})[key] = value
    return config


def run_hardware(params: dict) -> dict:
    import torch

    from library.training.config.config_loader import resolve_config
    from library.training.residency.fp8_weights import weight_bytes
    from library.training.memory.memory_estimate import estimate_memory
    from library.training.loop import Trainer

    resolved = resolve_config(["--config_file", params["config"]])
    estimate = estimate_memory(resolved.args).accelerator_total
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer = Trainer(resolved)
    started = time.perf_counter()
    trainer.setup()
    setup_seconds = time.perf_counter() - started
    marks, losses, validation = [time.perf_counter()], [], []
    step, batch_loss, validation_loss = trainer.optimizer_step, trainer.objective.batch_loss, trainer.validation_loss

    def timed_step():
        logs = step()
        if cuda:
            torch.cuda.synchronize()
        marks.append(time.perf_counter())
        return logs

    def recorded_loss(*args, **kwargs):
        loss = batch_loss(*args, **kwargs)
        losses.append(float(loss.detach()))
        return loss

    def recorded_validation():
        value = validation_loss()
        if value is not None:
            validation.append(float(value))
        return value

    trainer.optimizer_step, trainer.objective.batch_loss, trainer.validation_loss = timed_step, recorded_loss, recorded_validation
    pixel_seconds = _time_pixel_preparation(trainer)
    marks[0] = time.perf_counter()
    final = trainer.run()
    step_times = [b - a for a, b in zip(marks, marks[1:])]
    sample_dir = Path(resolved.args.output_dir) / "sample"
    return {
        "device": str(trainer.device), "precision": trainer.mixed, "setup_seconds": setup_seconds,
        "first_step_seconds": step_times[0] if step_times else None,
        "step_seconds": sorted(step_times[1:])[len(step_times[1:]) // 2] if len(step_times) > 1 else None,
        "losses": losses, "losses_finite": all(math.isfinite(v) for v in losses), "validation": validation,
        "samples": len(list(sample_dir.glob("*.png"))) if sample_dir.is_dir() else 0,
        "unet_weight_bytes": weight_bytes(trainer.model.unet),
        "peak_cuda_bytes": torch.cuda.max_memory_allocated() if cuda else None,
        "estimate_bytes": estimate, "final": str(final) if final else None,
        "placed": [[e.component, list(e.dtypes)] for e in trainer.placement.where("place")],
        "main_process_pixel_seconds": pixel_seconds[0],
    }


def _time_pixel_preparation(trainer) -> list[float]:
    """Seconds the main process spends getting uncached samples' pixels: decoding them itself (no
    loader workers), or waiting for the workers' next batch. A one-element list, filled as it runs."""
    total = [0.0]
    pixels = trainer.latents.pixels
    augmented = pixels.augmented

    def timed_augmented(*args, **kwargs):
        started = time.perf_counter()
        try:
            return augmented(*args, **kwargs)
        finally:
            total[0] += time.perf_counter() - started

    pixels.augmented = timed_augmented
    loader = trainer.pixel_loader
    if loader is not None:
        epoch = loader.epoch

        def timed_epoch(*args):
            iterator = epoch(*args)
            while True:
                started = time.perf_counter()
                try:
                    item = next(iterator)
                except StopIteration:
                    return
                finally:
                    total[0] += time.perf_counter() - started
                yield item

        loader.epoch = timed_epoch
    return total


# --- the bench's "hardware" section (tools/bench.py --sections hardware) -----------------------------
def _median(values):
    values = sorted(v for v in values if v is not None)
    return values[len(values) // 2] if values else None
