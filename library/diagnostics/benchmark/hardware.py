"""The hardware section of the benchmark (`tools/bench.py --sections hardware`): precision, fp8,
torch.compile and loader-worker runs, each a fresh process running hardware_tasks.run_hardware,
and their table."""
from __future__ import annotations

from pathlib import Path

from library.diagnostics.benchmark import training
from library.diagnostics.benchmark.hardware_tasks import hardware_config


def bench_hardware(workdir: Path, opts: dict, log=print) -> dict:
    """Precision, fp8 storage, torch.compile and loader workers, each run in its own process: `small`
    at opts["resolution"] (fp32 repeats, one fp32 run compiled with inductor, one bf16, bf16 +
    fp8_base and fp16 run of 3 steps), and `tiny` on uncached 512 px photos with 0 and 2 workers."""
    from library.diagnostics.benchmark.measure import summarize
    from library.diagnostics.benchmark.models import write_model
    from library.diagnostics.benchmark.runner import run_task
    from library.training.residency.precision import cpu_has_half_kernels

    model = write_model("small", workdir / "models")
    train_dir = training.prepare_dataset(workdir, opts["resolution"])
    steps = opts["warmup"] + opts["steps"] + 1

    def config(name, options, size_model=model, data=train_dir, resolution=opts["resolution"], run_steps=steps):
        path = workdir / "configs" / f"hardware_{name}.toml"
        return str(training.write_config(path, hardware_config(size_model, data, workdir / f"out_hardware_{name}", resolution,
                                                               run_steps, options)))

    runs = {"fp32": [], "fp32_compiled": []}
    for repeat in range(opts["repeats"]):
        log(f"[small] hardware repeat {repeat + 1}/{opts['repeats']}: fp32")
        runs["fp32"].append(run_task("hardware", {"config": config("fp32", {})}))
    log("[small] hardware: fp32 with torch_compile (inductor), once")
    runs["fp32_compiled"].append(run_task("hardware", {"config": config(
        "compiled", {"torch_compile": True, "dynamo_backend": "inductor"})}, timeout=3600))
    # half precision: few steps (on a CPU without bf16/fp16 matrix instructions a step is ~100x fp32's)
    for name, options in (("bf16", {"mixed_precision": "bf16"}), ("bf16_fp8", {"mixed_precision": "bf16", "fp8_base": True}),
                          ("fp16", {"mixed_precision": "fp16"})):
        log(f"[small] hardware: {name}, once, 3 steps")
        runs[name] = [run_task("hardware", {"config": config(name, options, run_steps=3)}, timeout=3600)]
    precision = {}
    for name, results in runs.items():
        precision[name] = {
            "step_seconds": summarize([r["step_seconds"] for r in results]),
            "first_step_seconds": summarize([r["first_step_seconds"] for r in results]),
            "unet_weight_bytes": results[0]["unet_weight_bytes"],
            "losses": results[0]["losses"],
            "steps": len(results[0]["losses"]),
        }
    bf16, fp8 = precision["bf16"]["losses"], precision["bf16_fp8"]["losses"]
    loss_difference = [abs(a - b) / abs(b) for a, b in zip(fp8, bf16)]
    return {
        "model": "small", "resolution": opts["resolution"], "batch_size": 2, "steps_per_run": steps,
        "precision": precision,
        "fp8": {"unet_bytes_fp32": precision["fp32"]["unet_weight_bytes"], "unet_bytes_bf16": precision["bf16"]["unet_weight_bytes"],
                "unet_bytes_fp8": precision["bf16_fp8"]["unet_weight_bytes"],
                "fp32_over_fp8": precision["fp32"]["unet_weight_bytes"] / precision["bf16_fp8"]["unet_weight_bytes"],
                "loss_relative_difference_max": max(loss_difference) if loss_difference else None,
                "loss_relative_difference_mean": sum(loss_difference) / len(loss_difference) if loss_difference else None},
        "compile": {"precision": "fp32", "first_step_seconds": precision["fp32_compiled"]["first_step_seconds"]["median"],
                    "uncompiled_first_step_seconds": precision["fp32"]["first_step_seconds"]["median"],
                    "step_seconds": precision["fp32_compiled"]["step_seconds"]["median"],
                    "uncompiled_step_seconds": precision["fp32"]["step_seconds"]["median"]},
        "cpu_half_kernels": {name: cpu_has_half_kernels(name) for name in ("bf16", "fp16")},
        "loader_workers": bench_loader_workers(workdir, opts, log),
    }


def bench_loader_workers(workdir: Path, opts: dict, log=print) -> dict:
    """`tiny` at 512 px on uncached camera-sized photos, 0 vs 2 loader workers, interleaved."""
    from library.diagnostics.benchmark.measure import summarize
    from library.diagnostics.benchmark.models import write_model
    from library.diagnostics.benchmark.preparation import write_photos
    from library.diagnostics.benchmark.runner import run_task

    def config(name, options, model, data, resolution, run_steps):
        path = workdir / "configs" / f"hardware_{name}.toml"
        return str(training.write_config(path, hardware_config(model, data, workdir / f"out_hardware_{name}", resolution,
                                                               run_steps, options)))

    steps = 8  # all in one epoch of 12 batches: the workers' head start at an epoch's first batch is not the figure
    tiny = write_model("tiny", workdir / "models")
    photos_root = workdir / "photos_2048x1536"  # camera-sized sources: decoding and resizing cost what they do for users
    write_photos(photos_root / "1_bench", 24, (2048, 1536), caption="bench concept")
    loader = {0: [], 2: []}
    for repeat in range(opts["repeats"]):
        for workers in loader:
            log(f"[tiny] loader workers {workers}, repeat {repeat + 1}/{opts['repeats']}")
            options = {"cache_latents": False, "cache_latents_to_disk": False, "flip_aug": True, "max_data_loader_n_workers": workers,
                       "persistent_data_loader_workers": True}
            loader[workers].append(run_task("hardware", {"config": config(f"loader{workers}", options, tiny, photos_root, 512, steps)}))
    zero = [r["step_seconds"] for r in loader[0]]
    two = [r["step_seconds"] for r in loader[2]]
    per_step = {w: [r["main_process_pixel_seconds"] / max(len(r["losses"]), 1) for r in runs_] for w, runs_ in loader.items()}
    return {"model": "tiny", "resolution": 512, "images": "24 PNG photos 2048x1536, uncached, flip_aug, 8 steps",
            "step_seconds_0_workers": summarize(zero), "step_seconds_2_workers": summarize(two),
            "speedup": summarize([a / b for a, b in zip(zero, two)]),
            "main_process_pixel_seconds_per_step_0_workers": summarize(per_step[0]),
            "main_process_pixel_seconds_per_step_2_workers": summarize(per_step[2])}


def format_hardware(section: dict) -> list[str]:
    from library.diagnostics.benchmark.report_format import MIB, fmt_stat

    p, f, c, w = section["precision"], section["fp8"], section["compile"], section["loader_workers"]
    lines = ["", f"| {section['model']}, {section['resolution']} px, batch {section['batch_size']} | s/step | first step | UNet weights "
             "| losses |", "|---|---|---|---|---|"]
    for name, row in p.items():
        losses = ", ".join(f"{v:.4f}" for v in row["losses"])
        lines.append(f"| {name} | {fmt_stat(row['step_seconds'], digits=3)} | {fmt_stat(row['first_step_seconds'], unit=' s', digits=1)} "
                     f"| {row['unet_weight_bytes'] / MIB:,.1f} MiB | {losses} |")
    lines += ["", "| measurement | value |", "|---|---|",
              f"| UNet weights fp32 / bf16 / fp8_base | {f['unet_bytes_fp32'] / MIB:,.1f} / {f['unet_bytes_bf16'] / MIB:,.1f} / "
              f"{f['unet_bytes_fp8'] / MIB:,.1f} MiB (fp32 / fp8 = {f['fp32_over_fp8']:.2f}) |",
              f"| fp8_base loss vs bf16, per step (same seed) | mean {f['loss_relative_difference_mean']:.2%}, max "
              f"{f['loss_relative_difference_max']:.2%} |",
              f"| torch_compile (inductor, {c['precision']}) first step / uncompiled | {c['first_step_seconds']:.1f} s / "
              f"{c['uncompiled_first_step_seconds']:.1f} s |",
              f"| torch_compile step / uncompiled | {c['step_seconds']:.3f} s / {c['uncompiled_step_seconds']:.3f} s |",
              f"| this CPU has bf16 / fp16 matrix instructions | {section['cpu_half_kernels']['bf16']} / {section['cpu_half_kernels']['fp16']} |",
              f"| loader: {w['model']}, {w['resolution']} px, {w['images']}: 0 / 2 workers | "
              f"{fmt_stat(w['step_seconds_0_workers'], digits=3)} / {fmt_stat(w['step_seconds_2_workers'], digits=3)} s/step "
              f"(speed-up {fmt_stat(w['speedup'])}) |",
              f"| loader: main-process seconds per step getting pixels, 0 / 2 workers | "
              f"{fmt_stat(w['main_process_pixel_seconds_per_step_0_workers'], digits=3)} / "
              f"{fmt_stat(w['main_process_pixel_seconds_per_step_2_workers'], digits=3)} |"]
    return lines
