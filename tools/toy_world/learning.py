"""Does a network trained on the toy world's concept learn it? Train through the product's trainer,
then score images generated at LoRA weights 0 and 1 (tools/toy_world/evaluation.py).

Every algorithm starts from the shipped recipe (train_config/toy_world/config_file.toml) and
changes only what its network needs (module, arguments, learning rate). A run saves a file every
`save_every` steps; the concept rate of each file gives the steps needed to reach the target.
"""
from __future__ import annotations

import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "train_config" / "toy_world" / "config_file.toml"
CONCEPT_TARGET = 0.8  # share of concept-coloured images at weight 1
OUTPUT_NAME = "zkz_toy"

# argv added to the shipped recipe, per algorithm. The learning rates were tuned on this world (docs/toy_world.md):
# a Hadamard or Kronecker product of small factors, or DyLoRA's random rank, moves more slowly per step.
ALGORITHMS: dict[str, list[str]] = {
    "LoRA": [],
    "LoCon": ["--network_args", "conv_dim=4", "conv_alpha=1", "--learning_rate", "4e-3"],
    "LoHa": ["--network_module", "lycoris.kohya", "--network_args", "algo=loha", "preset=attn-mlp", "--learning_rate", "8e-3"],
    "LoKr": ["--network_module", "lycoris.kohya", "--network_args", "algo=lokr", "preset=attn-mlp", "factor=4",
             "--learning_rate", "2e-2"],
    "DyLoRA": ["--network_module", "networks.dylora", "--network_args", "unit=2", "--learning_rate", "4e-3"],
    "pivotal": ["--train_text_encoder_ti", "--token_abstraction", "zkz", "--num_new_tokens_per_abstraction", "2",
                "--text_encoder_lr", "1e-2"],
}


def training_argv(world_dir, output_dir, algorithm: str, save_every: int | None = None, extra=()) -> list[str]:
    """sdxl_train_network.py's command line for `algorithm` on the world in `world_dir`."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; known: {', '.join(ALGORITHMS)}")
    world_dir = Path(world_dir)
    argv = ["--config_file", str(CONFIG), "--pretrained_model_name_or_path", str(world_dir / "toy_sdxl.safetensors"),
            "--train_data_dir", str(world_dir / "concept"), "--reg_data_dir", str(world_dir / "reg"),
            "--output_dir", str(output_dir), "--output_name", OUTPUT_NAME, "--sample_every_n_steps", "0"]
    if save_every:
        argv += ["--save_every_n_steps", str(save_every)]
    return argv + ALGORITHMS[algorithm] + list(extra)


def train(world_dir, output_dir, algorithm: str, save_every: int | None = None, extra=()) -> float:
    """Train in this process; returns the wall seconds of sdxl_train_network.main."""
    from sdxl_train_network import main

    start = time.perf_counter()
    if main(training_argv(world_dir, output_dir, algorithm, save_every, extra)) != 0:
        raise RuntimeError(f"training {algorithm} failed")
    return time.perf_counter() - start


def network_files(output_dir) -> list[tuple[int | None, Path]]:
    """(step, file) of every saved network, intermediate ones by step, the final one last (step None)."""
    files = []
    for path in sorted(Path(output_dir).glob(f"{OUTPUT_NAME}*.safetensors")):
        if path.stem.endswith("_emb"):
            continue
        step = path.stem.rsplit("-step", 1)[1] if "-step" in path.stem else None
        files.append((int(step) if step else None, path))
    return sorted(files, key=lambda item: (item[0] is None, item[0] or 0))


def _embedding(path: Path) -> Path | None:
    candidate = path.with_name(path.stem + "_emb.safetensors")
    return candidate if candidate.is_file() else None


def measure(world_dir, output_dir, total_steps: int, seeds=None, sampler=None) -> dict:
    """Concept rate and base accuracy at weights 0 and 1 of the final network; the concept rate at
    weight 1 of every intermediate one (the learning curve) and the first step reaching the target.
    A pivotal run's embedding stays loaded at weight 0 (it is not a LoRA weight); its concept rate
    with the trigger as a plain word is `w0_without_embedding`."""
    from tools.toy_world.evaluation import SEEDS, Evaluator, SamplerSettings

    seeds = tuple(seeds or SEEDS)
    sampler = sampler or SamplerSettings()
    files = network_files(output_dir)
    if not files:
        raise RuntimeError(f"no network file in {output_dir}")
    curve = []
    for step, path in files[:-1]:
        curve.append([step, Evaluator(world_dir, lora=str(path), embedding=_embedding(path), settings=sampler).concept_rate(1.0, seeds)])
    final = files[-1][1]
    evaluator = Evaluator(world_dir, lora=str(final), embedding=_embedding(final), settings=sampler)
    w1 = evaluator.concept_rate(1.0, seeds)
    curve.append([total_steps, w1])
    base = {weight: evaluator.base_accuracy(weight, seeds) for weight in (0.0, 1.0)}
    reached = next((step for step, rate in curve if rate >= CONCEPT_TARGET), None)
    concept = {"w0": evaluator.concept_rate(0.0, seeds), "w1": w1}
    if _embedding(final):  # at LoRA weight 0 the learned tokens still speak; the trigger as a plain word:
        concept["w0_without_embedding"] = Evaluator(world_dir, settings=sampler).concept_rate(0.0, seeds)
    return {
        "concept_rate": concept,
        "base_accuracy": {f"w{weight:g}": {"mean": sum(rates.values()) / len(rates), "min": min(rates.values()),
                                          "per_prompt": rates} for weight, rates in base.items()},
        "curve": curve, "steps_to_target": reached, "seeds": len(seeds),
    }


def run_learning(params: dict) -> dict:
    """Benchmark task (library/diagnostics/benchmark/worker.py): train one algorithm, measure it."""
    import torch

    import shutil

    if params.get("threads"):
        torch.set_num_threads(params["threads"])
    output = Path(params["workdir"]) / params["algorithm"]
    shutil.rmtree(output, ignore_errors=True)  # files of an earlier run would join the learning curve
    seconds = train(params["world"], output, params["algorithm"], params.get("save_every"))
    from safetensors import safe_open

    final = network_files(output)[-1][1]
    with safe_open(str(final), framework="pt") as handle:
        steps = int(handle.metadata().get("ss_steps", 0))
    return {"algorithm": params["algorithm"], "train_seconds": seconds, "steps": steps,
            "argv": ALGORITHMS[params["algorithm"]], **measure(params["world"], output, steps)}


def run_toy_world(params: dict) -> dict:
    """Benchmark task: build (or reuse) the toy world; build.json's content."""
    import torch

    from tools.toy_world.build import build_world

    if params.get("threads"):
        torch.set_num_threads(params["threads"])
    return build_world(params["output_dir"], progress=False)
