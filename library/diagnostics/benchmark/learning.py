"""The benchmark's learning section: on the toy world (tools/toy_world/), does each network type
learn the held-out concept, and does it leave the base prompts alone?

Each algorithm trains in its own process through sdxl_train_network.main (the shipped recipe
train_config/toy_world/config_file.toml plus what the algorithm needs), then its files are scored
by generating 16 fixed seeds at LoRA weights 0 and 1 (see docs/toy_world.md).
"""
from __future__ import annotations

from pathlib import Path

from library.file_io import write_json_atomic

from library.diagnostics.benchmark.runner import run_task

TARGETS = {"concept_rate_w1_min": 0.8, "concept_rate_w0_max": 0.2, "base_accuracy_w1_min": 0.6, "base_accuracy_w0_min": 0.8}


def bench_learning(workdir: Path, opts: dict, log=print) -> dict:
    from tools.toy_world.evaluation import SEEDS, SamplerSettings
    from tools.toy_world.learning import ALGORITHMS

    world = Path(opts.get("toy_world") or workdir / "toy_world")
    log(f"[learning] building (or reusing) the toy world in {world}")
    build = run_task("toy_world", {"output_dir": str(world), "threads": opts.get("threads")}, timeout=3600)
    results = {}
    for name in opts.get("algorithms") or list(ALGORITHMS):
        log(f"[learning] {name}: training and scoring")
        results[name] = run_task("learning", {"world": str(world), "workdir": str(workdir / "learning"), "algorithm": name,
                                              "save_every": opts.get("save_every", 20), "threads": opts.get("threads")},
                                 timeout=3600)
        # each network's figures are kept as soon as they exist: the section takes ~20 minutes
        write_json_atomic(Path(workdir) / "learning" / name / "result.json", results[name])
    sampler = SamplerSettings()
    return {"world": {"path": str(world), "fingerprint": build["fingerprint"], "build_seconds": build.get("total_seconds"),
                      "build_threads": build.get("threads")},
            "sampler": {"name": sampler.sampler, "steps": sampler.steps, "guidance": sampler.guidance, "seeds": len(SEEDS)},
            "targets": TARGETS, "algorithms": results}


def learning_checks(learning: dict) -> dict:
    """One check per algorithm: every target of the toy-world issue met?"""
    checks = {}
    for name, result in learning["algorithms"].items():
        concept, base = result["concept_rate"], result["base_accuracy"]
        w0 = concept.get("w0_without_embedding", concept["w0"])  # pivotal: the base before the new tokens
        met = (concept["w1"] >= TARGETS["concept_rate_w1_min"] and w0 <= TARGETS["concept_rate_w0_max"]
               and base["w1"]["min"] >= TARGETS["base_accuracy_w1_min"] and base["w0"]["min"] >= TARGETS["base_accuracy_w0_min"])
        checks[f"learning_{name}"] = {"value": f"concept {w0:.2f} -> {concept['w1']:.2f}, base min "
                                               f"{base['w0']['min']:.2f} -> {base['w1']['min']:.2f}",
                                      "limit": "concept <= 0.2 -> >= 0.8, base >= 0.8 -> >= 0.6", "met": met}
    return checks
