"""The benchmark's `peer` section: our trainer against diffusers' own SDXL LoRA training script
(`examples/advanced_diffusion_training/train_dreambooth_lora_sdxl_advanced.py`), side by side.

Both train the same diffusers-layout model on the same images at the same resolution: LoRA rank 4
(alpha = rank), batch 2, AdamW, lr 1e-4, fp32, latents cached in memory, text outputs encoded once,
no checkpointing, no sampling or validation, TensorBoard logging (the script cannot log to nothing)
and one save at the end. Each run is a fresh process, started by `peer_probe.py` (same events on
both sides) and timed from here around the whole process; peak RSS is the child's own high-water
mark (`os.wait4`). Runs alternate script, ours, script, ours at a short and a long step count:
per-step time = (long - short) / (long steps - short steps), so start-up and saving cancel; the
whole run is the long run's wall time. Ratios are ours / script per repeat.

Module sets differ: the script trains PEFT LoRA on to_q/to_k/to_v/to_out.0; ours kohya's default
(every Linear and 1x1 conv in the transformer blocks: also proj_in/out and the feed-forward).
`networks.lora` has no option to target only the attention projections, so no like-for-like row.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from library.diagnostics.benchmark.peers.child_process import run_child
from library.diagnostics.benchmark.measure import summarize
from library.diagnostics.benchmark.runner import ROOT, TaskFailed

# model size -> (resolution, short steps, long steps)
PLAN = {"tiny": (128, 10, 40), "small": (256, 5, 40)}
IMAGES = 8
CAPTION = "bench concept, 1girl, night sky"
RANK = 4
BATCH_SIZE = 2
SEED = 1
PROBE = Path(__file__).with_name("peer_probe.py")
SCRIPT_LORA_FILE = "pytorch_lora_weights.safetensors"
OUR_LORA_NAME = "bench_lora"


# --- what runs ----------------------------------------------------------------------------------
def script_arguments(model: Path, images: Path, output_dir: Path, resolution: int, steps: int) -> list[str]:
    """The diffusers script's options for the shared configuration (see the module docstring)."""
    return ["--pretrained_model_name_or_path", str(model), "--instance_data_dir", str(images),
            "--instance_prompt", CAPTION, "--output_dir", str(output_dir), "--resolution", str(resolution),
            "--train_batch_size", str(BATCH_SIZE), "--rank", str(RANK), "--max_train_steps", str(steps),
            "--learning_rate", "1e-4", "--lr_scheduler", "constant", "--lr_warmup_steps", "0",
            "--optimizer", "AdamW", "--cache_latents", "--mixed_precision", "no", "--seed", str(SEED),
            # a state save every N steps: N beyond the run, so only the final LoRA is written
            "--checkpointing_steps", str(steps + 1000), "--dataloader_num_workers", "0",
            # validation runs only with --validation_prompt (not given); "none" is no tracker for accelerate
            "--report_to", "tensorboard"]


def our_config(model: Path, train_dir: Path, output_dir: Path, resolution: int, steps: int) -> dict:
    """Our training config for the same run (kohya sections)."""
    return {
        "sdxl_arguments": {"cache_text_encoder_outputs": True},
        "model_arguments": {"pretrained_model_name_or_path": str(model)},
        "dataset_arguments": {"train_data_dir": str(train_dir), "resolution": f"{resolution},{resolution}", "cache_latents": True},
        "training_arguments": {"output_dir": str(output_dir), "output_name": OUR_LORA_NAME, "train_batch_size": BATCH_SIZE,
                               "max_train_steps": steps, "seed": SEED, "max_data_loader_n_workers": 0,
                               "gradient_checkpointing": False, "mixed_precision": "no"},
        "logging_arguments": {"log_with": "tensorboard", "logging_dir": str(output_dir / "logs")},
        "optimizer_arguments": {"optimizer_type": "AdamW", "learning_rate": 1e-4, "lr_scheduler": "constant"},
        "additional_network_arguments": {"network_module": "networks.lora", "network_dim": RANK, "network_alpha": RANK,
                                         "network_train_unet_only": True},
    }


def child_environment(threads: int | None) -> dict:
    """The same for both sides: offline, and one intra-op thread count through OpenMP's variable
    (the script never calls torch.set_num_threads, so the environment is what both obey)."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TQDM_DISABLE": "1",
                "PYTHONUNBUFFERED": "1"})
    if threads:
        env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
    return env


def commands(side: str, python: str, script: Path, run_dir: Path, model: Path, images: dict, resolution: int,
             steps: int) -> tuple[list[str], Path]:
    """(command line, the LoRA file the run writes) of one run; `run_dir` holds its output and events."""
    events = run_dir / "events.json"
    if side == "peer":
        output = run_dir / "output"
        return ([python, str(PROBE), str(events), str(script), *script_arguments(model, images["peer"], output, resolution, steps)],
                output / SCRIPT_LORA_FILE)
    from library.diagnostics.benchmark.training import write_config

    output = run_dir / "output"
    config = write_config(run_dir / "config.toml", our_config(model, images["ours"], output, resolution, steps))
    return ([python, str(PROBE), str(events), str(ROOT / "sdxl_train_network.py"), "--config_file", str(config)],
            output / f"{OUR_LORA_NAME}.safetensors")


# --- one run ------------------------------------------------------------------------------------
def run_process(command: list[str], env: dict, log_path: Path, timeout: float = 3600) -> dict:
    """Wall seconds around the whole child process and its own peak RSS (child_process.run_child)."""
    return run_child(command, ROOT, env, log_path, label=command[3], timeout=timeout)


def phases(events: dict, started: float, ended: float, saved: float) -> dict:
    """Where a run's wall time went, from the probe's events (seconds; they add up to the wall).

    start_up: process start to the first model call (imports, reading the model); the encode
    windows; other_setup: the rest before the first UNet call; training: first UNet call to the end
    of the last step; save: to the LoRA file's modification time; exit: from there to process end."""
    windows = events.get("windows", {})
    calls = [w["first_start"] for w in windows.values() if w.get("first_start")]
    first_model = min(calls) if calls else None
    steps = events.get("steps") or []
    unet = windows.get("unet", {}).get("first_start")

    def width(name):
        window = windows.get(name) or {}
        return (window["last_end"] - window["first_start"]) if window.get("first_start") and window.get("last_end") else 0.0

    if first_model is None or unet is None or not steps:
        return {}
    out = {"start_up": first_model - started, "text_encoding": width("text"), "latent_caching": width("vae")}
    out["other_setup"] = unet - started - out["start_up"] - out["text_encoding"] - out["latent_caching"]
    out["training"] = steps[-1] - unet
    out["save"] = saved - steps[-1]
    out["exit"] = ended - saved
    return out


def step_interval(events: dict) -> float | None:
    """Median time between optimizer steps inside the run (after the first step)."""
    steps = events.get("steps") or []
    gaps = [b - a for a, b in zip(steps[1:], steps[2:])]
    return summarize(gaps)["median"] if gaps else None


def lora_summary(path: Path) -> dict:
    """Modules and parameters in a saved LoRA file (kohya, PEFT or diffusers key names)."""
    from safetensors import safe_open

    modules, parameters = set(), 0
    with safe_open(str(path), framework="pt") as handle:
        for key in handle.keys():
            module, sep, _ = key.partition(".lora")  # .lora_down / .lora_A (kohya, PEFT) or .lora.down (diffusers)
            if not sep or key.endswith(".alpha"):
                continue
            count = 1
            for size in handle.get_slice(key).get_shape():
                count *= size
            parameters += count
            modules.add(module)
    return {"modules": len(modules), "parameters": parameters, "bytes": path.stat().st_size}


def measure_run(side: str, command: list[str], lora_file: Path, run_dir: Path, env: dict, steps: int) -> dict:
    import json

    if run_dir.exists():
        shutil.rmtree(run_dir / "output", ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    process = run_process(command, env, run_dir / "log.txt")
    if not lora_file.exists():
        raise TaskFailed(f"{side}: finished without writing {lora_file} (log: {run_dir / 'log.txt'})")
    events = json.loads((run_dir / "events.json").read_text(encoding="utf-8"))
    if len(events.get("steps", [])) != steps:
        raise TaskFailed(f"{side}: {len(events.get('steps', []))} optimizer steps seen, {steps} expected (log: {run_dir / 'log.txt'})")
    saved = lora_file.stat().st_mtime
    return {"side": side, "steps": steps, "wall_seconds": process["wall_seconds"], "peak_rss_bytes": process["peak_rss_bytes"],
            "start_to_saved_lora_seconds": saved - process["started"], "step_interval_seconds": step_interval(events),
            "phases": phases(events, process["started"], process["ended"], saved), "lora": lora_summary(lora_file)}


# --- arithmetic over the runs -------------------------------------------------------------------
def per_step(short: dict, long: dict) -> float:
    """Seconds per step from a short and a long run: what start-up and saving add cancels."""
    return (long["wall_seconds"] - short["wall_seconds"]) / (long["steps"] - short["steps"])


def summarize_side(pairs: list[dict]) -> dict:
    """Statistics over repeats of one side; `pairs` holds {"short": run, "long": run} per repeat."""
    long_runs = [p["long"] for p in pairs]
    phase_names = sorted({name for run in long_runs for name in run["phases"]})
    return {"step_seconds": summarize([per_step(p["short"], p["long"]) for p in pairs]),
            "whole_run_seconds": summarize([r["wall_seconds"] for r in long_runs]),
            "start_to_saved_lora_seconds": summarize([r["start_to_saved_lora_seconds"] for r in long_runs]),
            "short_run_seconds": summarize([p["short"]["wall_seconds"] for p in pairs]),
            "step_interval_in_run_seconds": summarize([r["step_interval_seconds"] for r in long_runs]),
            "peak_rss_bytes": summarize([r["peak_rss_bytes"] for r in long_runs]),
            "phases_seconds": {name: summarize([r["phases"].get(name) for r in long_runs]) for name in phase_names},
            "lora": long_runs[0]["lora"]}


def compare(pairs: dict) -> dict:
    """Ours / script per repeat (pairs measured in the same window) for steps, whole run and RSS."""
    ours, peer = pairs["ours"], pairs["peer"]

    def ratios(value):
        return summarize([value(a) / value(b) for a, b in zip(ours, peer)])

    return {"step_ratio": ratios(lambda p: per_step(p["short"], p["long"])),
            "whole_run_ratio": ratios(lambda p: p["long"]["wall_seconds"]),
            # the script goes on after its LoRA file (reloads the pipeline, writes a kohya-format copy)
            "start_to_saved_lora_ratio": ratios(lambda p: p["long"]["start_to_saved_lora_seconds"]),
            "peak_rss_ratio": ratios(lambda p: p["long"]["peak_rss_bytes"])}


# --- the section --------------------------------------------------------------------------------
def prepare_images(folder: Path, resolution: int) -> dict:
    """The same PNGs twice: a kohya folder with captions (ours) and a bare image folder (the script
    reads every file of its folder as an image, and prompts all with --instance_prompt)."""
    from library.data.demo_images import make_concept_images

    ours = folder / f"images_{resolution}"
    subset = ours / "1_bench"
    if not subset.exists():
        make_concept_images(subset, count=IMAGES, caption=CAPTION, sizes=[(resolution, resolution)])
    peer = folder / f"images_{resolution}_script"
    if not peer.exists():
        staging = folder / f"images_{resolution}_script.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for image in sorted(subset.glob("*.png")):
            shutil.copy2(image, staging / image.name)
        staging.rename(peer)
    return {"ours": ours, "peer": peer}


def check_peer_python(python: str, script: Path) -> None:
    """Fail early, in one line, when the script or its interpreter's packages are missing."""
    from library.errors import UserError

    if not script.is_file():
        raise UserError(f"--peer_script {script}: not found; get train_dreambooth_lora_sdxl_advanced.py from diffusers' "
                        "examples/advanced_diffusion_training (docs/performance.md)")
    probe = subprocess.run([python, "-c", "import torchvision, peft, diffusers, accelerate"], capture_output=True, text=True,
                           env=child_environment(1))
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"--peer_python {python}: cannot import the script's packages ({last}); "
                        "build its venv as docs/performance.md describes")


def bench_peer(workdir: Path, opts: dict, log=print) -> dict:
    """For each size: repeats x (script short, ours short, script long, ours long), fresh processes."""
    from library.diagnostics.benchmark.models import write_diffusers_model

    script, python = Path(opts["peer_script"]).resolve(), opts.get("peer_python") or sys.executable
    check_peer_python(python, script)
    folder = workdir / "peer"
    env = child_environment(opts.get("threads"))
    sizes = {}
    for size in opts["sizes"]:
        resolution, short, long = PLAN[size]
        model = write_diffusers_model(size, folder / "models")
        images = prepare_images(folder, resolution)
        pairs = {"peer": [], "ours": []}
        for repeat in range(opts["repeats"]):
            runs = {"peer": {}, "ours": {}}
            for length, steps in (("short", short), ("long", long)):
                for side in ("peer", "ours"):
                    log(f"[{size}] peer section, repeat {repeat + 1}/{opts['repeats']}: {side}, {steps} steps")
                    run_dir = folder / "runs" / f"{size}_{side}_{steps}_{repeat}"
                    command, lora_file = commands(side, python if side == "peer" else sys.executable, script, run_dir,
                                                  model, images, resolution, steps)
                    runs[side][length] = measure_run(side, command, lora_file, run_dir, env, steps)
            for side in pairs:
                pairs[side].append(runs[side])
        sizes[size] = {"model": str(model), "resolution": resolution, "batch_size": BATCH_SIZE, "rank": RANK,
                       "steps": {"short": short, "long": long}, "repeats": opts["repeats"],
                       "peer": summarize_side(pairs["peer"]), "ours": summarize_side(pairs["ours"]),
                       **compare(pairs), "runs": pairs}
    return {"script": str(script), "python": python, "threads": opts.get("threads"), "sizes": sizes}
