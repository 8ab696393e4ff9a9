"""The whole benchmark: which tasks run, in which (interleaved) order, and the report they make.

Every measured variant runs in its own process. Compared variants alternate (A B A B ...) so a
busy neighbour slows both alike; the report keeps every repeat and gives medians, ratios per
pair and their spread ((max - min) / median).
"""
from __future__ import annotations

import platform
import time
from pathlib import Path

from library.diagnostics.benchmark import preparation

from library.diagnostics.benchmark import training
from library.diagnostics.benchmark.measure import summarize
from library.diagnostics.benchmark.models import write_model
from library.diagnostics.benchmark.runner import run_task

SCHEMA_VERSION = 1
SECTIONS = ("training", "startup", "calibration", "preparation")  # the default; "hardware", "efficiency", "realsize",
# "learning" (six networks trained on the toy world, ~15 min), "peer" (diffusers' own script) and "kohya" (kohya's
# own trainer at real SDXL size, ~1 h) only when asked for
TARGETS = {
    "step_time_ratio_max": 1.10,
    "peak_memory_ratio_max": 1.15,
    "startup_ratio_max": 1.5,
    "caching_ratio_min": 0.8,
    "indexing_seconds_max": 20.0,
    "checkpointing_reduction_min": 0.30,
    "peer_whole_run_ratio_max": 0.8,  # issue 17: tiny, 40 steps, process start to saved LoRA, vs diffusers' script
    "peer_small_step_ratio_max": 0.85,
}


def _model_path(size: str, workdir: Path, sdxl_path: str | None) -> Path:
    return Path(sdxl_path) if size == "sdxl" else write_model(size, workdir / "models")


def _config(workdir: Path, size: str, model: Path, train_dir: Path, opts: dict, name: str, steps: int, **kwargs) -> Path:
    config = training.training_config(model, train_dir, workdir / f"out_{size}_{name}", opts["resolution"], opts["batch_size"],
                                      opts["rank"], steps, **kwargs)
    return training.write_config(workdir / "configs" / f"{size}_{name}.toml", config)


def bench_training(size: str, workdir: Path, opts: dict, sdxl_path: str | None = None, log=print) -> dict:
    """Our step vs the reference loop, interleaved, plus checkpointing and text-encoder caching runs."""
    model = _model_path(size, workdir, sdxl_path)
    train_dir = training.prepare_dataset(workdir, opts["resolution"])
    steps = opts["warmup"] + opts["steps"]
    base = _config(workdir, size, model, train_dir, opts, "base", steps)
    reference_params = {"model": str(model), "train_dir": str(train_dir), "resolution": opts["resolution"],
                        "batch_size": opts["batch_size"], "rank": opts["rank"], "warmup": opts["warmup"], "steps": opts["steps"],
                        "gradient_checkpointing": False, "threads": opts.get("threads")}
    ours_runs, reference_runs = [], []
    for repeat in range(opts["repeats"]):
        log(f"[{size}] training repeat {repeat + 1}/{opts['repeats']}: ours")
        ours_runs.append(run_task("ours", {"config": str(base), "warmup": opts["warmup"], "threads": opts.get("threads")}))
        log(f"[{size}] training repeat {repeat + 1}/{opts['repeats']}: reference")
        reference_runs.append(run_task("reference", reference_params))
    ours_step = [summarize(r["step_times"])["median"] for r in ours_runs]
    ref_step = [summarize(r["step_times"])["median"] for r in reference_runs]
    ours_peak = [r["peak_rss_training"] for r in ours_runs]
    ref_peak = [r["peak_rss_training"] for r in reference_runs]
    result = {
        "model": str(model), "resolution": opts["resolution"], "batch_size": opts["batch_size"], "rank": opts["rank"],
        "steps_measured": opts["steps"], "warmup_steps": opts["warmup"],
        "ours": {"step_seconds": summarize(ours_step), "steps_per_second": summarize([1 / s for s in ours_step]),
                 "peak_rss_training_bytes": summarize(ours_peak), "peak_rss_process_bytes": summarize([r["peak_rss_process"] for r in ours_runs]),
                 "start_to_first_step_seconds": summarize([r["start_to_first_step"] for r in ours_runs])},
        "reference": {"step_seconds": summarize(ref_step), "steps_per_second": summarize([1 / s for s in ref_step]),
                      "peak_rss_training_bytes": summarize(ref_peak),
                      "peak_rss_process_bytes": summarize([r["peak_rss_process"] for r in reference_runs])},
        "step_time_ratio": summarize([a / b for a, b in zip(ours_step, ref_step)]),
        "peak_memory_ratio": summarize([a / b for a, b in zip(ours_peak, ref_peak)]),
    }
    # memory features: checkpointing on vs off, text-encoder output caching off vs on (interleaved)
    checkpointed = _config(workdir, size, model, train_dir, opts, "checkpointing", steps, gradient_checkpointing=True)
    uncached = _config(workdir, size, model, train_dir, opts, "no_te_cache", steps, cache_text=False)
    gc_runs, te_runs = [], []
    for repeat in range(opts["memory_repeats"]):
        log(f"[{size}] memory repeat {repeat + 1}/{opts['memory_repeats']}: checkpointing, no text-encoder cache")
        gc_runs.append(run_task("ours", {"config": str(checkpointed), "warmup": opts["warmup"], "threads": opts.get("threads")}))
        te_runs.append(run_task("ours", {"config": str(uncached), "warmup": opts["warmup"], "threads": opts.get("threads")}))
    plain = ours_runs[: len(gc_runs)]
    increase = lambda r: r["peak_rss_training"] - r["rss_before_training"]  # noqa: E731
    result["gradient_checkpointing"] = {
        "peak_rss_training_bytes": {"off": summarize([r["peak_rss_training"] for r in plain]),
                                    "on": summarize([r["peak_rss_training"] for r in gc_runs])},
        "training_increase_bytes": {"off": summarize([increase(r) for r in plain]), "on": summarize([increase(r) for r in gc_runs])},
        "step_seconds_on": summarize([summarize(r["step_times"])["median"] for r in gc_runs]),
        "reduction": summarize([1 - g["peak_rss_training"] / p["peak_rss_training"] for g, p in zip(gc_runs, plain)]),
        "reduction_of_training_increase": summarize([1 - increase(g) / max(increase(p), 1) for g, p in zip(gc_runs, plain)]),
    }
    result["text_encoder_caching"] = {
        "peak_rss_training_bytes": {"cached": summarize([r["peak_rss_training"] for r in plain]),
                                    "not_cached": summarize([r["peak_rss_training"] for r in te_runs])},
        "text_encoders_resident_while_training": {"cached": any(r["text_encoders_loaded"] for r in plain),
                                                   "not_cached": any(r["text_encoders_loaded"] for r in te_runs)},
    }
    return result


def bench_startup(workdir: Path, opts: dict, log=print) -> dict:
    """On `tiny` with cached latents: process start to first optimizer step vs importing what it needs."""
    model = write_model("tiny", workdir / "models")
    train_dir = training.prepare_dataset(workdir, 64)
    tiny_opts = {**opts, "resolution": 64, "batch_size": 2}
    config = _config(workdir, "tiny", model, train_dir, tiny_opts, "startup", 1)
    modules = workdir / "startup_modules.json"
    run_task("startup", {"config": str(config), "modules_file": str(modules)})  # writes the caches once
    starts, imports = [], []
    for repeat in range(opts["repeats"]):
        log(f"[tiny] startup repeat {repeat + 1}/{opts['repeats']}")
        starts.append(run_task("startup", {"config": str(config), "modules_file": str(modules)})["start_to_first_step"])
        imports.append(run_task("imports", {"modules_file": str(modules)})["import_seconds"])
    return {"start_to_first_step_seconds": summarize(starts), "import_seconds": summarize(imports),
            "ratio": summarize([s / i for s, i in zip(starts, imports)])}


def bench_calibration(size: str, workdir: Path, cases: list[dict], log=print, sdxl_path: str | None = None) -> dict:
    """--estimate_memory's working memory (activations + LoRA gradients) vs the anonymous memory a real
    CPU training step adds to its process, per case: with glibc's default malloc (what a user sees)
    and with a fixed mmap threshold (freed memory returned at once: the process follows its tensors)."""
    from library.diagnostics.benchmark.process_memory import TRACKING_MALLOC_ENV

    model = _model_path(size, workdir, sdxl_path)
    rows = []
    for case in cases:
        log(f"[{size}] memory-estimate calibration {case}")
        train_dir = training.prepare_dataset(workdir, case["resolution"])
        config = training.write_config(
            workdir / "configs" / f"{size}_calibration_{case['resolution']}_{case['batch_size']}_{case['gradient_checkpointing']}.toml",
            training.training_config(model, train_dir, workdir / f"out_{size}_calibration", case["resolution"], case["batch_size"],
                                     case.get("rank", 16), 3, gradient_checkpointing=case["gradient_checkpointing"]))
        tracked = run_task("calibration", {"config": str(config), "count_tensors": True}, env=TRACKING_MALLOC_ENV)
        default = run_task("calibration", {"config": str(config)})
        estimate = tracked.pop("estimate")
        default.pop("estimate")
        working = estimate["activations"] + estimate["lora_gradients"]
        rows.append({**case, "estimated_bytes": working, "measured_bytes": tracked["step_added"], "ratio": working / tracked["step_added"],
                     "measured_default_malloc_bytes": default["step_added"], "ratio_default_malloc": working / default["step_added"],
                     "tensor_bytes": tracked["tensor_peak"], "estimated_total_bytes": estimate["accelerator_total"],
                     "estimate": estimate, "measured": tracked, "measured_default_malloc": default})
    return {"size": size, "cases": rows, "max_relative_error": max(abs(r["ratio"] - 1) for r in rows) if rows else None}


def bench_efficiency(workdir: Path, opts: dict, log=print) -> dict:
    """`small` (fp32, kohya's default modules): achieved FLOP/s of our step against this CPU's fp32
    GEMM rate, on 1 and on 2 threads, runs interleaved (1, 2, 1, 2, ...)."""
    size = opts.get("target_size", "small")
    model = write_model(size, workdir / "models")
    train_dir = training.prepare_dataset(workdir, opts["resolution"])
    config = _config(workdir, size, model, train_dir, opts, "efficiency", opts["warmup"] + opts["steps"] + 1)
    runs = {1: [], 2: []}
    for repeat in range(opts["repeats"]):
        for threads in (1, 2):
            log(f"[{size}] efficiency, {threads} thread(s), repeat {repeat + 1}/{opts['repeats']}")
            runs[threads].append(run_task("efficiency", {"config": str(config), "warmup": opts["warmup"] + 1, "threads": threads}))
    out = {"model": size, "resolution": opts["resolution"], "batch_size": opts["batch_size"], "rank": opts["rank"]}
    for threads, results in runs.items():
        out[f"threads_{threads}"] = {
            "flops_per_step": results[0]["flops_per_step"], "flops_by_op": results[0]["flops_by_op"],
            **{key: summarize([r[key] for r in results]) for key in
               ("gemm_flops_per_second", "step_seconds", "achieved_flops_per_second", "efficiency", "compute_limit_seconds",
                "step_over_limit")}}
    out["two_over_one_thread_step"] = summarize([b["step_seconds"] / a["step_seconds"] for a, b in zip(runs[1], runs[2])])
    return out


def bench_preparation(workdir: Path, opts: dict, log=print) -> dict:
    size = opts.get("caching_size", "small")
    model = write_model(size, workdir / "models")
    resolution = opts.get("caching_resolution", 256)
    photos = preparation.write_photos(workdir / f"photos_{resolution}", opts["caching_images"], (resolution + 64, resolution + 32),
                                      caption="a photo")
    log(f"[{size}] latent caching vs raw VAE encode")
    caching = run_task("caching", {"model": str(model), "images": str(photos), "resolution": resolution, "batch_size": 4,
                                   "repeats": opts["repeats"], "threads": opts.get("threads")})
    text_size = opts.get("text_caching_size", "real")
    log(f"[{text_size} text encoders] text-encoder output caching: one caption per forward vs batched")
    text_caching = run_task("text_caching", {"size": text_size, "images": opts.get("text_caching_images", 32),
                                             "dtype": opts.get("text_caching_dtype", "fp32"), "repeats": opts["repeats"],
                                             "threads": opts.get("threads")})
    log("tagging")
    tagger = preparation.write_tagger(workdir / "tagger")
    tagging = run_task("tagging", {"images": str(photos), "tagger": str(tagger), "repeats": opts["repeats"]})
    log(f"indexing {opts['index_images']} images")
    index_root = preparation.generate_index_images(workdir / f"index_{opts['index_images']}", opts["index_images"])
    indexing = run_task("indexing", {"images": str(index_root)})
    return {"latent_caching": {**caching, "model": size}, "text_encoder_caching": text_caching, "tagging": tagging,
            "indexing": indexing}


def fp8_support() -> dict:
    return {"supported": True, "reason": "fp8_base / fp8_base_unet store per-channel scaled float8_e4m3fn weights on any device "
                                         "(library/training/residency/fp8_weights.py; figures in the hardware section)"}


def environment() -> dict:
    import os

    import torch

    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {"python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available(), "platform": platform.platform(),
            "load_average_at_start": load}


def run_benchmark(opts: dict, workdir: Path, log=print) -> dict:
    """The JSON report (see validate_report for its shape)."""
    started = time.time()
    workdir.mkdir(parents=True, exist_ok=True)
    sections = set(opts.get("sections") or SECTIONS)
    performance = bool(sections & set(SECTIONS))
    report = opts.get("previous") or ({"training": {}, "memory_estimate": {}} if performance else {})  # --update: re-measure some sections
    report.update({"schema_version": SCHEMA_VERSION, "targets": TARGETS})
    report.setdefault("runs", []).append({"sections": sorted(sections), "environment": environment(),
                                          "options": {k: v for k, v in opts.items() if k not in ("sdxl", "previous")}})
    report["environment"], report["options"] = report["runs"][-1]["environment"], report["runs"][-1]["options"]
    sizes = list(opts["sizes"]) + (["sdxl"] if opts.get("sdxl") else [])
    if "training" in sections:
        for size in sizes:
            report["training"][size] = bench_training(size, workdir, opts, opts.get("sdxl"), log)
    if "startup" in sections:
        report["startup"] = bench_startup(workdir, opts, log)
    if "calibration" in sections:
        for size in opts["calibration_sizes"]:
            report["memory_estimate"][size] = bench_calibration(size, workdir, opts["calibration_cases"], log)
    if "preparation" in sections:
        report["preparation"] = bench_preparation(workdir, opts, log)
    if "efficiency" in sections:  # opt-in (--sections efficiency): FLOPs of the step vs the GEMM rate, 1 and 2 threads
        report["efficiency"] = bench_efficiency(workdir, opts, log)
    if "realsize" in sections:  # opt-in (--sections realsize): the real SDXL architecture, minutes per step
        from library.diagnostics.benchmark.realsize import bench_realsize

        report["realsize"] = bench_realsize(workdir, opts, log)
    if "hardware" in sections:  # opt-in (--sections hardware): inductor compiles for minutes on a CPU
        from library.diagnostics.benchmark.hardware import bench_hardware

        report["hardware"] = bench_hardware(workdir, opts, log)
    if "learning" in sections:  # opt-in (--sections learning): does each network type learn the toy world's concept?
        from library.diagnostics.benchmark.learning import bench_learning

        report["learning"] = bench_learning(workdir, opts, log)
    if "peer" in sections:  # opt-in (--sections peer --peer_script PATH): diffusers' SDXL LoRA script, side by side
        from library.diagnostics.benchmark.peers.peer import bench_peer

        report["peer"] = bench_peer(workdir, opts, log)
    if "kohya" in sections:  # opt-in (--sections kohya --kohya_dir --kohya_python): kohya's own trainer, side by side
        from library.diagnostics.benchmark.peers.kohya import bench_kohya

        report["kohya"] = bench_kohya(workdir, opts, log)
    report["fp8"] = fp8_support()
    if has_checkable_sections(report):
        report["target_checks"] = target_checks(report, opts.get("target_size", "small"))  # not after a hardware-only run
    report["elapsed_seconds"] = time.time() - started
    return report


OPT_IN_SECTIONS = ("learning", "peer", "kohya")  # measured only when named; each is a complete report by itself


def has_checkable_sections(report: dict) -> bool:
    """Whether `report` has what target checks and the schema need: the default sections, or an
    opt-in section (a hardware-only run has neither). tools/bench.py asks the same question."""
    defaults = report.get("training") and report.get("startup") and report.get("preparation")
    return bool(defaults or any(report.get(name) for name in OPT_IN_SECTIONS))


def target_checks(report: dict, size: str) -> dict:
    """Each target of the performance issue: the measured median and whether it is met."""
    def check(value, limit, at_most=True):
        if value is None:
            return {"value": None, "limit": limit, "met": None}
        return {"value": value, "limit": limit, "met": value <= limit if at_most else value >= limit}

    checks = {}
    if "learning" in report:
        from library.diagnostics.benchmark.learning import learning_checks

        checks.update(learning_checks(report["learning"]))
    if "peer" in report:
        from library.diagnostics.benchmark.peers.peer_report import peer_checks

        checks.update(peer_checks(report["peer"]))
    if "kohya" in report:
        from library.diagnostics.benchmark.peers.kohya_report import kohya_checks

        checks.update(kohya_checks(report["kohya"]))
    if not (report.get("training") and report.get("preparation")):  # an opt-in-only report (learning, peer, kohya)
        return {"size": size, **checks}
    training_result = report["training"].get(size) or next(iter(report["training"].values()), None)
    prep = report["preparation"]
    if training_result:
        checks["step_time_ratio"] = check(training_result["step_time_ratio"]["median"], TARGETS["step_time_ratio_max"])
        checks["peak_memory_ratio"] = check(training_result["peak_memory_ratio"]["median"], TARGETS["peak_memory_ratio_max"])
        checks["checkpointing_reduction"] = check(training_result["gradient_checkpointing"]["reduction"]["median"],
                                                  TARGETS["checkpointing_reduction_min"], at_most=False)
        resident = training_result["text_encoder_caching"]["text_encoders_resident_while_training"]["cached"]
        checks["text_encoders_freed_with_caching"] = {"value": not resident, "limit": True, "met": not resident}
    checks["startup_ratio"] = check(report["startup"]["ratio"]["median"], TARGETS["startup_ratio_max"])
    checks["caching_ratio"] = check(prep["latent_caching"]["ratio"]["median"], TARGETS["caching_ratio_min"], at_most=False)
    indexing_all = prep["indexing"]["all"]
    checks["indexing_seconds"] = check(indexing_all["total_seconds"] if indexing_all["images"] >= 10000 else None,
                                       TARGETS["indexing_seconds_max"])
    return {"size": size, **checks}
