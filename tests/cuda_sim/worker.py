"""Runs the pretend-CUDA scenarios in one process and writes what each run saw, for tests/test_cuda_sim.py.

    python tests/cuda_sim/worker.py --output_dir DIR [scenario ...]

Pretend CUDA is installed before torch is imported; then every scenario (tools/pretend_cuda/scenarios.py)
runs the real `sdxl_train_network.main` (or tools/sdxl_gen_img.py) on the tiny model, and
`DIR/<scenario>.json` records the exit code, the devices and dtypes the trainer used, the losses
(and the device they were computed on), how many ops ran on the device, the saved files and their
contents, or the error with its traceback. Each file is written when its run ends (atomically), so
the tests can check the first scenarios while later ones still run.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tools.pretend_cuda import install  # noqa: E402  (before torch)

install()

import numpy as np  # noqa: E402
import toml  # noqa: E402
import torch  # noqa: E402

from tools.pretend_cuda.scenarios import SCENARIOS, Scenario  # noqa: E402
from tests.training_fixtures import base_config, write_config  # noqa: E402
from tools.pretend_cuda import tensor as pretend  # noqa: E402

CAPTION = "TOK, 1girl, black suit"


def build_world(root: Path) -> dict:
    """The tiny model, two image folders, masks, prompts: shared by every scenario."""
    from PIL import Image

    from library.data.demo_images import make_concept_images
    from library.models.tiny_sdxl import SINGLE_FILE_NAME, write_tiny_sdxl

    model_dir = root / "model"
    if not (model_dir / SINGLE_FILE_NAME).exists():
        write_tiny_sdxl(model_dir, seed=0)
    images = make_concept_images(root / "train" / "2_TOK", count=3, caption=CAPTION, sizes=[(64, 64)])
    masks = root / "masks"
    masks.mkdir(exist_ok=True)
    x = np.linspace(0, 255, 64, dtype=np.float32)[None, :].repeat(64, 0)
    for image in images:
        Image.fromarray(x.astype(np.uint8)).save(masks / image.name)
    prompts = root / "prompts.txt"
    prompts.write_text("TOK on a roof --w 64 --h 64 --s 2 --d 5\n", encoding="utf-8")
    datasets = {}
    for name, extra in (("preservation", {"custom_attributes": {"diff_output_preservation": True}}), ("multiplier", {})):
        subset = {"image_dir": str(root / "train" / "2_TOK"), "class_tokens": "TOK", "num_repeats": 2, **extra}
        dataset = {"resolution": 64, "batch_size": 2, "subsets": [subset]}
        if name == "multiplier":
            dataset["network_multiplier"] = 0.5
        datasets[name] = root / f"dataset_{name}.toml"
        datasets[name].write_text(toml.dumps({"datasets": [dataset]}), encoding="utf-8")
    return {"model": model_dir / SINGLE_FILE_NAME, "train": root / "train", "masks": masks, "prompts": prompts,
            "datasets": datasets, "root": root}


def scenario_config(world: dict, scenario: Scenario, out: Path, **extra) -> dict:
    options = dict(max_train_steps=2, train_batch_size=1, network_train_unet_only=True, learning_rate=1e-3)
    if scenario.samples:
        options.update(sample_prompts=str(world["prompts"]), sample_every_n_steps=1)
    if scenario.validation:
        options.update(validation_split=0.34, validate_every_n_steps=2)
    options.update(log_with="tensorboard", logging_dir=str(out / "logs"))
    if scenario.data == "masks":
        options["conditioning_data_dir"] = str(world["masks"])
    if scenario.data in ("preservation", "multiplier"):
        options.update(dataset_config=str(world["datasets"][scenario.data]), train_data_dir=None)
    options.update(scenario.options)
    options.update(extra)
    return base_config(world["model"], world["train"], out, **options)


class Observer:
    """Watches one training run from inside: the trainer, its losses and the ops run on the device."""

    def __init__(self):
        from library.training.loop import Trainer
        from library.training.objective.batch_objective import BatchObjective

        self.trainer = None
        self.losses: list[tuple[float, str, str]] = []
        self.logs: list[tuple[int, dict]] = []
        original_setup, original_loss = Trainer.setup, BatchObjective.batch_loss
        observer = self

        def setup(trainer):
            observer.trainer = trainer
            original_setup(trainer)
            log = trainer.accelerator.log

            def record(values, step=None, **kwargs):
                observer.logs.append((step, {k: float(v) if isinstance(v, (int, float)) else str(v) for k, v in values.items()}))
                return log(values, step=step, **kwargs)

            trainer.accelerator.log = record

        def batch_loss(objective, *args, **kwargs):
            loss = original_loss(objective, *args, **kwargs)
            if loss is not None:
                observer.losses.append((float(loss.detach().float().cpu()), str(loss.device), str(loss.dtype)))
            return loss

        self.patches = [(Trainer, "setup", original_setup, setup), (BatchObjective, "batch_loss", original_loss, batch_loss)]

    def __enter__(self):
        for owner, name, _, replacement in self.patches:
            setattr(owner, name, replacement)
        pretend.STATS.reset()
        return self

    def __exit__(self, *exc):
        for owner, name, original, _ in self.patches:
            setattr(owner, name, original)
        return False

    def facts(self) -> dict:
        trainer = self.trainer
        if trainer is None:
            return {}
        facts = {"losses": self.losses, "logs": self.logs, "cuda_ops": pretend.STATS.cuda_ops}
        facts["device"] = str(trainer.device)
        network = getattr(trainer, "network", None)
        if network is not None:
            trainable = [p for p in network.parameters() if p.requires_grad]
            facts["network_devices"] = sorted({str(p.device) for p in trainable})
            facts["network_dtypes"] = sorted({str(p.dtype) for p in trainable})
        placement = getattr(trainer, "placement", None)
        if placement is not None:
            facts["placement"] = [[e.action, e.component, e.device, list(e.dtypes)] for e in placement.events]
        return facts


def file_facts(path: Path) -> dict:
    from safetensors import safe_open

    if not path.exists():
        return {"exists": False}
    with safe_open(str(path), framework="pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        metadata = handle.metadata() or {}
    trained = [t for k, t in tensors.items() if k.endswith(("lora_up.weight", "hada_w2_a", "lokr_w2", "clip_l", "clip_g"))]
    return {"exists": True, "keys": len(tensors), "dtypes": sorted({str(t.dtype) for t in tensors.values()}),
            "finite": all(bool(torch.isfinite(t.float()).all()) for t in tensors.values()),
            "trained_max": max((float(t.float().abs().max()) for t in trained), default=0.0),
            "ss_network_module": metadata.get("ss_network_module")}


def run_training(world: dict, scenario: Scenario, out: Path, **extra) -> dict:
    from sdxl_train_network import main

    out.parent.mkdir(parents=True, exist_ok=True)
    config = write_config(out.with_suffix(".toml"), scenario_config(world, scenario, out, **extra))
    with Observer() as observer:
        started = time.perf_counter()
        code = main(["--config_file", str(config)])
        seconds = time.perf_counter() - started
    facts = observer.facts()
    facts.update(exit_code=code, seconds=round(seconds, 2))
    facts["lora"] = file_facts(out / "tiny_lora.safetensors")
    facts["embeddings"] = file_facts(out / "tiny_lora_emb.safetensors")
    facts["samples"] = sorted(p.name for p in (out / "sample").glob("*.png"))
    return facts


def run_resume(world: dict, scenario: Scenario, out: Path) -> dict:
    """4 steps straight, and 2 steps + a resume to 4: the two final files must be bit-identical."""
    from safetensors.torch import load_file

    straight = run_training(world, scenario, out / "straight", max_train_steps=4)
    first = run_training(world, scenario, out / "first", max_train_steps=2, save_state_on_train_end=True)
    resumed = run_training(world, scenario, out / "first", max_train_steps=4, resume=str(out / "first"))
    a = load_file(str(out / "straight" / "tiny_lora.safetensors"))
    b = load_file(str(out / "first" / "tiny_lora.safetensors"))
    differing = sorted(k for k in a if not torch.equal(a[k], b[k]))
    return {"exit_code": max(straight["exit_code"], first["exit_code"], resumed["exit_code"]), "straight": straight,
            "resumed": resumed, "differing_tensors": differing, "compared_tensors": len(a),
            "losses_straight": [loss for loss, _, _ in straight["losses"]],
            "losses_resumed": [loss for loss, _, _ in first["losses"] + resumed["losses"]],
            "device": straight.get("device")}


def run_offload_equivalence(world: dict, scenario: Scenario, out: Path) -> dict:
    """Plain gradient checkpointing and cpu_offload_checkpointing on the device: the offloaded run must
    hold its checkpoints in host memory (copies to the CPU) and end with the same LoRA (up to the order
    in which autograd sums gradients through the extra copy nodes)."""
    from safetensors.torch import load_file

    import library.training.residency.checkpointing as checkpointing

    original = checkpointing.offloaded_checkpoint
    seen = {"calls": 0, "devices": set(), "held": set()}

    def watched(block, *args):
        seen["calls"] += 1
        seen["devices"].update(str(a.device) for a in args if isinstance(a, torch.Tensor))
        to = torch.Tensor.to

        def spy(tensor, *a, **k):
            moved = to(tensor, *a, **k)
            seen["held"].add(str(moved.device))
            return moved

        torch.Tensor.to = spy
        try:
            return original(block, *args)
        finally:
            torch.Tensor.to = to

    plain = run_training(world, scenario, out / "plain")
    checkpointing.offloaded_checkpoint = watched
    try:
        offloaded = run_training(world, scenario, out / "offloaded", cpu_offload_checkpointing=True)
    finally:
        checkpointing.offloaded_checkpoint = original
    a = load_file(str(out / "plain" / "tiny_lora.safetensors"))
    b = load_file(str(out / "offloaded" / "tiny_lora.safetensors"))
    return {"exit_code": max(plain["exit_code"], offloaded["exit_code"]), "device": plain.get("device"),
            "compared_tensors": len(a), "max_difference": max(float((a[k] - b[k]).abs().max()) for k in a),
            "max_value": max(float(a[k].abs().max()) for k in a if "lora_up" in k),
            "offload_calls": seen["calls"], "input_devices": sorted(seen["devices"]), "copies_to": sorted(seen["held"])}


def run_generation(world: dict, out: Path) -> dict:
    """Train a LoRA, then tools/sdxl_gen_img.py with it on the device, at weight 0 and 1."""
    scenario = Scenario(samples=False, validation=False)
    trained = run_training(world, scenario, out / "train", max_train_steps=2)
    sys.path.insert(0, str(REPO / "tools"))
    from tools.sdxl_gen_img import main as generate

    lora = out / "train" / "tiny_lora.safetensors"
    images = {}
    pretend.STATS.reset()
    for weight in ("0", "1"):
        folder = out / f"weight{weight}"
        code = generate(["--ckpt", str(world["model"]), "--device", "cuda", "--precision", "fp16", "--outdir", str(folder),
                         "--prompt", "TOK on a roof", "--W", "64", "--H", "64", "--steps", "2", "--seed", "3",
                         "--network_weights", str(lora), "--network_mul", weight])
        written = sorted(folder.glob("*.png"))
        images[weight] = {"exit_code": code, "files": [p.name for p in written]}
        if written:
            from PIL import Image

            images[weight]["pixels"] = np.asarray(Image.open(written[0]).convert("RGB"), dtype=np.int16).tolist()
    pixels = [np.array(images[w].get("pixels", [])) for w in ("0", "1")]
    differ = bool(pixels[0].size and pixels[1].size and np.abs(pixels[0] - pixels[1]).max() > 0)
    for entry in images.values():
        entry.pop("pixels", None)
    return {"exit_code": max([trained["exit_code"]] + [v["exit_code"] or 0 for v in images.values()]), "train": trained,
            "images": images, "lora_changes_image": differ, "cuda_ops": pretend.STATS.cuda_ops, "device": "cuda"}


def run_planted(world: dict, scenario: Scenario, out: Path) -> dict:
    """The batch's latents moved to the CPU, as a trainer bug would: pretend CUDA must raise."""
    from library.training.objective.batch_objective import BatchObjective

    original = BatchObjective.inputs

    def inputs_on_cpu(objective, *args, **kwargs):
        latents, mask, ids, weights = original(objective, *args, **kwargs)
        return latents.cpu(), mask, ids, weights

    BatchObjective.inputs = inputs_on_cpu
    try:
        facts = run_training(world, scenario, out)
    except RuntimeError as error:
        return {"exit_code": 0, "raised": str(error).splitlines()[0], "device": "cuda"}
    finally:
        BatchObjective.inputs = original
    return {"exit_code": facts["exit_code"], "raised": None, "device": facts.get("device")}


def run_scenario(world: dict, name: str, out: Path) -> dict:
    scenario = SCENARIOS[name]
    if scenario.kind == "resume":
        return run_resume(world, scenario, out)
    if scenario.kind == "offload_equivalence":
        return run_offload_equivalence(world, scenario, out)
    if scenario.kind == "generate":
        return run_generation(world, out)
    if scenario.kind == "planted_cpu_tensor":
        return run_planted(world, scenario, out)
    if scenario.kind == "device_rules":
        from tests.cuda_sim.device_rules import check_rules

        return {"exit_code": 0, "rules": check_rules()}
    return run_training(world, scenario, out)


def write_result(path: Path, result: dict) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(result, indent=1), encoding="utf-8")
    os.replace(temporary, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("scenarios", nargs="*", help="names from tools/pretend_cuda/scenarios.py (default: all)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # runs beside the single-threaded test suite, on the other core
    root = Path(args.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    world = build_world(root / "world")
    for name in args.scenarios or list(SCENARIOS):
        out = root / "runs" / name
        started = time.perf_counter()
        captured = io.StringIO()
        try:
            with contextlib.redirect_stdout(captured):
                result = {"status": "ok", **run_scenario(world, name, out)}
        except BaseException as error:  # noqa: BLE001  (a failing scenario is a result, the next one still runs)
            result = {"status": "error", "error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
        result["output_tail"] = captured.getvalue().splitlines()[-25:]
        result["wall_seconds"] = round(time.perf_counter() - started, 2)
        write_result(root / f"{name}.json", result)
        print(f"{name}: {result['status']} ({result['wall_seconds']} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
