"""The benchmark's `kohya` section: our sdxl_train_network.py against kohya-ss/sd-scripts' own, on the
same command line, side by side.

Both train the real SDXL architecture (a single file with random weights, real_size_model.py) on the
same images: 512 px, batch 1, `networks.lora` rank 4 on the UNet only (722 modules on both sides),
latents and text-encoder outputs cached, gradient checkpointing, AdamW, SDPA attention, TensorBoard,
one save at the end. Tokenizers come from our own vocabulary files, given to both as
`--tokenizer_cache_dir` (kohya's folder names), so neither touches the network. Every run is a fresh
process; runs alternate kohya, ours at a short and a long step count (kohya's start-up varies by
tens of seconds, so per-step time comes from the TensorBoard step timestamps inside each run, and the
short/long difference gives a second estimate). Peak RSS is the child's high-water mark (wait4);
anonymous memory is sampled from /proc. kohya at real size peaks near 22 GiB: one run at a time.

kohya runs from a copy of its repository (`--kohya_dir`) with its own interpreter (`--kohya_python`),
whose venv docs/performance.md describes; nothing of kohya is installed into this project.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from library.diagnostics.benchmark.peers.child_process import run_child
from library.diagnostics.benchmark.measure import summarize
from library.diagnostics.benchmark.runner import ROOT, TaskFailed

IMAGES = 4
CAPTION = "bench concept, 1girl, night sky"
RESOLUTION = 512
RANK = 4
SEED = 1
OUTPUT_NAME = "bench_lora"
KOHYA_TOKENIZER_FOLDERS = ("openai_clip-vit-large-patch14", "laion_CLIP-ViT-bigG-14-laion2B-39B-b160k")


def shared_arguments(model: Path, images: Path, tokenizers: Path, output: Path, steps: int, precision: str,
                     resolution: int = RESOLUTION) -> list[str]:
    """The one command line both trainers get (kohya's option names)."""
    return ["--pretrained_model_name_or_path", str(model), "--train_data_dir", str(images), "--caption_extension", ".caption",
            "--resolution", f"{resolution},{resolution}", "--train_batch_size", "1", "--max_train_steps", str(steps),
            "--network_module", "networks.lora", "--network_dim", str(RANK), "--network_alpha", str(RANK),
            "--network_train_unet_only", "--cache_latents", "--cache_text_encoder_outputs", "--gradient_checkpointing",
            "--optimizer_type", "AdamW", "--learning_rate", "1e-3", "--lr_scheduler", "constant", "--sdpa",
            "--mixed_precision", precision, "--seed", str(SEED), "--output_dir", str(output / "output"),
            "--output_name", OUTPUT_NAME, "--save_model_as", "safetensors", "--max_data_loader_n_workers", "0",
            "--log_with", "tensorboard", "--logging_dir", str(output / "logs"), "--tokenizer_cache_dir", str(tokenizers)]


def command(side: str, python: str, kohya_dir: Path, arguments: list[str]) -> tuple[list[str], Path]:
    """(command line, working folder) of one side."""
    if side == "kohya":
        return [python, str(kohya_dir / "sdxl_train_network.py"), *arguments], kohya_dir
    return [python, str(ROOT / "sdxl_train_network.py"), *arguments], ROOT


def child_environment(threads: int | None) -> dict:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"})
    if threads:
        env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
    return env


# --- one run ------------------------------------------------------------------------------------
def logged_steps(log_dir: Path) -> list[tuple[int, float, float]]:
    """(step, wall time, loss) of every `loss/current` event under `log_dir` (both trainers log it per step)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rows = []
    for events in sorted(log_dir.rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        if "loss/current" in accumulator.Tags()["scalars"]:
            rows += [(e.step, e.wall_time, e.value) for e in accumulator.Scalars("loss/current")]
    return sorted(rows)


def measure_run(side: str, cmd: list[str], cwd: Path, run_dir: Path, env: dict, steps: int) -> dict:
    import shutil

    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    process = run_child(cmd, cwd, env, run_dir / "log.txt", label=f"{side}: {cmd[1]}")
    lora = run_dir / "output" / f"{OUTPUT_NAME}.safetensors"
    if not lora.exists():
        raise TaskFailed(f"{side}: finished without writing {lora} (log: {run_dir / 'log.txt'})")
    logged = logged_steps(run_dir / "logs")
    if len(logged) != steps:
        raise TaskFailed(f"{side}: {len(logged)} logged steps, {steps} expected (log: {run_dir / 'log.txt'})")
    times = [wall for _, wall, _ in logged]
    gaps = [b - a for a, b in zip(times, times[1:])]  # step k to k+1: the first step (warm-up) is not a gap's end
    return {"side": side, "steps": steps, "wall_seconds": process["wall_seconds"], "peak_rss_bytes": process["peak_rss_bytes"],
            "peak_anonymous_bytes": process["peak_anonymous_bytes"], "step_gaps_seconds": gaps,
            "first_step_after_start_seconds": times[0] - process["started"], "losses": [loss for _, _, loss in logged],
            "modules": lora_modules(lora)}


def lora_modules(path: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return len({key.split(".")[0] for key in handle.keys() if key.endswith("lora_down.weight")})


# --- arithmetic -----------------------------------------------------------------------------------
def in_run_step(run: dict) -> float | None:
    """Median gap between logged steps inside one run (start-up and saving excluded)."""
    return summarize(run["step_gaps_seconds"])["median"] if run["step_gaps_seconds"] else None


def falls(losses: list[float]) -> bool:
    """Whether a loss curve falls: the mean of its second half below the mean of its first half."""
    half = len(losses) // 2
    return half > 0 and sum(losses[half:]) / (len(losses) - half) < sum(losses[:half]) / half


def summarize_side(runs: list[dict]) -> dict:
    long_runs = [r["long"] for r in runs]
    return {"step_seconds_in_run": summarize([in_run_step(r) for r in long_runs]),
            "step_seconds_short_long": summarize([(r["long"]["wall_seconds"] - r["short"]["wall_seconds"])
                                                  / (r["long"]["steps"] - r["short"]["steps"]) for r in runs]),
            "whole_run_seconds": summarize([r["wall_seconds"] for r in long_runs]),
            "first_step_after_start_seconds": summarize([r["first_step_after_start_seconds"] for r in long_runs]),
            "peak_rss_bytes": summarize([r["peak_rss_bytes"] for r in long_runs]),
            "peak_anonymous_bytes": summarize([r["peak_anonymous_bytes"] for r in long_runs]),
            "losses": [r["losses"] for r in long_runs], "loss_falls": [falls(r["losses"]) for r in long_runs],
            "modules": long_runs[0]["modules"]}


def compare(ours: list[dict], kohya: list[dict]) -> dict:
    def ratios(value):
        return summarize([value(a) / value(b) for a, b in zip(ours, kohya)])

    return {"step_ratio": ratios(lambda r: in_run_step(r["long"])),
            "whole_run_ratio": ratios(lambda r: r["long"]["wall_seconds"]),
            "peak_rss_ratio": ratios(lambda r: r["long"]["peak_rss_bytes"]),
            "peak_anonymous_ratio": ratios(lambda r: r["long"]["peak_anonymous_bytes"])}


# --- preparation ------------------------------------------------------------------------------------
def write_tokenizers(folder: Path) -> Path:
    """Both tokenizers from our packaged vocabulary (vocab.json + merges.txt, which any transformers
    version reads), in the folder names kohya's --tokenizer_cache_dir looks for."""
    import json

    from library.models.tokenizers import write_clip_tokenizer_files

    for name, pad in zip(KOHYA_TOKENIZER_FOLDERS, ("<|endoftext|>", "!")):
        target = folder / name
        if (target / "merges.txt").exists() and (target / "tokenizer_config.json").exists():
            continue
        write_clip_tokenizer_files(target)
        config = {"model_max_length": 77, "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                  "unk_token": "<|endoftext|>", "pad_token": pad, "tokenizer_class": "CLIPTokenizer"}
        (target / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def prepare_images(folder: Path) -> Path:
    from library.data.demo_images import make_concept_images

    images = folder / f"images_{RESOLUTION}"
    if not (images / "1_bench").exists():
        make_concept_images(images / "1_bench", count=IMAGES, caption=CAPTION, sizes=[(RESOLUTION, RESOLUTION)])
    return images


def check_kohya(python: str, kohya_dir: Path) -> None:
    from library.errors import UserError

    if not (kohya_dir / "sdxl_train_network.py").is_file():
        raise UserError(f"--kohya_dir {kohya_dir}: no sdxl_train_network.py there; extract kohya-ss/sd-scripts as "
                        "docs/performance.md describes")
    probe = subprocess.run([python, "-c", "import library.train_util, networks.lora"], capture_output=True, text=True,
                           cwd=kohya_dir, env=child_environment(1))
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"--kohya_python {python}: cannot import kohya's modules ({last}); build its venv as docs/performance.md describes")


def bench_kohya(workdir: Path, opts: dict, log=print) -> dict:
    """For each precision: repeats x (kohya short, ours short, kohya long, ours long), fresh processes."""
    from library.diagnostics.benchmark.real_size_model import write_real_size_model

    kohya_dir, python = Path(opts["kohya_dir"]).resolve(), opts["kohya_python"]
    check_kohya(python, kohya_dir)
    folder = workdir / "kohya"
    model = write_real_size_model(folder / "sdxl_real_size_random_fp16.safetensors")
    images = prepare_images(folder)
    tokenizers = write_tokenizers(folder / "tokenizers")
    env = child_environment(opts.get("threads"))
    short, long = opts.get("kohya_steps", (3, 6))
    results = {}
    for precision in opts.get("kohya_precisions", ("no", "bf16")):
        runs = {"kohya": [], "ours": []}
        for repeat in range(opts["repeats"]):
            pair = {"kohya": {}, "ours": {}}
            for length, steps in (("short", short), ("long", long)):
                for side in ("kohya", "ours"):
                    log(f"[kohya section] {precision}, repeat {repeat + 1}/{opts['repeats']}: {side}, {steps} steps")
                    run_dir = folder / "runs" / f"{precision}_{side}_{steps}_{repeat}"
                    arguments = shared_arguments(model, images, tokenizers, run_dir, steps, precision)
                    cmd, cwd = command(side, python if side == "kohya" else sys.executable, kohya_dir, arguments)
                    pair[side][length] = measure_run(side, cmd, cwd, run_dir, env, steps)
            for side in runs:
                runs[side].append(pair[side])
        results[precision] = {"kohya": summarize_side(runs["kohya"]), "ours": summarize_side(runs["ours"]),
                              **compare(runs["ours"], runs["kohya"]), "runs": runs}
    return {"kohya_dir": str(kohya_dir), "python": python, "threads": opts.get("threads"), "resolution": RESOLUTION,
            "images": IMAGES, "rank": RANK, "steps": {"short": short, "long": long}, "repeats": opts["repeats"],
            "model": str(model), "precisions": results}
