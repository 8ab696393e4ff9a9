"""The benchmark's `peer` section (our trainer vs diffusers' SDXL LoRA script), without the script:
the command lines of both sides, the probe and one measured run of a stand-in script, the
per-step / whole-run arithmetic, the report's schema, table and target checks."""
from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from library.diagnostics.benchmark.peers import peer

from library.diagnostics.benchmark.peers import peer_report
from library.diagnostics.benchmark.report import SchemaError, format_table, validate_report
from library.diagnostics.benchmark.suite import target_checks
from library.errors import UserError


def _option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_both_sides_train_the_same_run(tmp_path):
    images = {"peer": tmp_path / "bare", "ours": tmp_path / "kohya"}
    model = tmp_path / "model"
    command, lora = peer.commands("peer", "/venv/bin/python", Path("/x/adv.py"), tmp_path / "p", model, images, 128, 40)
    assert command[:4] == ["/venv/bin/python", str(peer.PROBE), str(tmp_path / "p" / "events.json"), "/x/adv.py"]
    args = command[4:]
    assert {_option(args, k) for k in ("--rank", "--train_batch_size", "--resolution", "--max_train_steps")} == {"4", "2", "128", "40"}
    assert _option(args, "--instance_data_dir") == str(images["peer"]) and _option(args, "--instance_prompt") == peer.CAPTION
    assert _option(args, "--mixed_precision") == "no" and _option(args, "--optimizer") == "AdamW"
    assert int(_option(args, "--checkpointing_steps")) > 40  # no state save inside the run
    assert "--cache_latents" in args and "--validation_prompt" not in args and "--train_text_encoder" not in args
    assert "--caption_column" not in args  # one prompt for all images: the script encodes it once
    assert lora == tmp_path / "p" / "output" / "pytorch_lora_weights.safetensors"

    command, lora = peer.commands("ours", sys.executable, Path("/x/adv.py"), tmp_path / "o", model, images, 128, 40)
    assert command[3].endswith("sdxl_train_network.py") and lora == tmp_path / "o" / "output" / "bench_lora.safetensors"
    from library.training.config.config_loader import resolve_config

    args = resolve_config(["--config_file", _option(command, "--config_file")]).args  # every key is a real option
    assert (args.network_dim, args.network_alpha, args.train_batch_size, args.max_train_steps) == (4, 4, 2, 40)
    assert args.cache_latents and not args.cache_latents_to_disk  # in memory, encoded in every run as the script does
    assert args.cache_text_encoder_outputs and not args.cache_text_encoder_outputs_to_disk
    assert args.network_train_unet_only and args.optimizer_type == "AdamW" and args.mixed_precision == "no"
    assert args.train_data_dir == str(images["ours"]) and args.log_with == "tensorboard"
    assert not args.gradient_checkpointing and not args.sample_every_n_steps and not args.save_every_n_epochs

    env = peer.child_environment(1)
    assert env["OMP_NUM_THREADS"] == "1" and env["HF_HUB_OFFLINE"] == "1" and "PYTHONPATH" not in env


STAND_IN = textwrap.dedent('''
    """A stand-in training script: a text model, a VAE encoder and a UNet by class name, 3 steps, a LoRA file."""
    import os, sys, torch
    from safetensors.torch import save_file
    os.makedirs(os.path.dirname(sys.argv[1]), exist_ok=True)
    class CLIPTextModel(torch.nn.Linear): pass
    class Encoder(torch.nn.Linear): pass
    class UNet2DConditionModel(torch.nn.Linear): pass
    text, vae, unet = CLIPTextModel(4, 4), Encoder(4, 4), UNet2DConditionModel(4, 4)
    with torch.no_grad():
        text(torch.ones(1, 4)); vae(torch.ones(1, 4)); vae(torch.ones(1, 4))
    optimizer = torch.optim.AdamW(unet.parameters())
    for _ in range(3):
        unet(torch.ones(2, 4)).sum().backward(); optimizer.step(); optimizer.zero_grad()
    save_file({"lora_unet_a.lora_down.weight": torch.zeros(2, 4), "lora_unet_a.lora_up.weight": torch.zeros(4, 2),
               "lora_unet_a.alpha": torch.tensor(2.0), "lora_unet_b.lora_down.weight": torch.zeros(2, 4)}, sys.argv[1])
''')


def test_probe_and_one_measured_run(tmp_path):
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN, encoding="utf-8")
    run_dir = tmp_path / "run"
    lora = run_dir / "output" / "lora.safetensors"
    command = [sys.executable, str(peer.PROBE), str(run_dir / "events.json"), str(script), str(lora)]
    run = peer.measure_run("ours", command, lora, run_dir, peer.child_environment(1), steps=3)
    events = json.loads((run_dir / "events.json").read_text(encoding="utf-8"))
    assert len(events["steps"]) == 3 and events["steps"] == sorted(events["steps"])
    assert events["windows"]["text"]["calls"] == 1 and events["windows"]["vae"]["calls"] == 2
    assert events["windows"]["unet"]["calls"] == 1  # hooks removed at the first step: later UNet calls not seen
    assert run["lora"] == {"modules": 2, "parameters": 24, "bytes": lora.stat().st_size}
    assert 50 * 2**20 < run["peak_rss_bytes"] < 4 * 2**30  # this child's own high-water mark (it imported torch)
    assert set(run["phases"]) == set(peer_report.PHASES)
    assert sum(run["phases"].values()) == pytest.approx(run["wall_seconds"], abs=1e-6)
    assert all(value >= -0.01 for value in run["phases"].values())
    assert run["phases"]["start_up"] > 0.1  # importing torch
    with pytest.raises(peer.TaskFailed, match="5 expected"):
        peer.measure_run("peer", command, lora, run_dir, peer.child_environment(1), steps=5)


def _run(steps: int, wall: float, rss: int, modules: int) -> dict:
    phases = {"start_up": wall - steps * 0.5 - 1, "text_encoding": 0.1, "latent_caching": 0.2, "other_setup": 0.2,
              "training": steps * 0.5, "save": 0.1, "exit": 0.4}
    return {"steps": steps, "wall_seconds": wall, "peak_rss_bytes": rss, "start_to_saved_lora_seconds": wall - 0.4,
            "step_interval_seconds": 0.5, "phases": phases, "lora": {"modules": modules, "parameters": 10, "bytes": 100}}


def _peer_section() -> dict:
    # script: 0.5 s/step ((30 - 15) / 30); ours 0.6 and 0.4 s/step in the two repeats
    pairs = {"peer": [{"short": _run(10, 15.0, 800 << 20, 176), "long": _run(40, 30.0, 800 << 20, 176)}] * 2,
             "ours": [{"short": _run(10, 10.0, 600 << 20, 242), "long": _run(40, 28.0, 400 << 20, 242)},
                      {"short": _run(10, 10.0, 600 << 20, 242), "long": _run(40, 22.0, 400 << 20, 242)}]}
    assert peer.per_step(pairs["ours"][0]["short"], pairs["ours"][0]["long"]) == pytest.approx(0.6)
    size = {"model": "m", "resolution": 128, "batch_size": 2, "rank": 4, "steps": {"short": 10, "long": 40}, "repeats": 2,
            "peer": peer.summarize_side(pairs["peer"]), "ours": peer.summarize_side(pairs["ours"]), **peer.compare(pairs),
            "runs": pairs}
    return {"script": "adv.py", "python": "python", "threads": 1, "sizes": {"tiny": size}}


def test_arithmetic_schema_table_and_targets():
    section = _peer_section()
    tiny = section["sizes"]["tiny"]
    assert tiny["peer"]["step_seconds"]["median"] == pytest.approx(0.5)
    assert tiny["ours"]["step_seconds"]["median"] == pytest.approx(0.5)  # median of 0.6 and 0.4
    assert tiny["step_ratio"]["min"] == pytest.approx(0.8) and tiny["step_ratio"]["max"] == pytest.approx(1.2)
    assert tiny["whole_run_ratio"]["median"] == pytest.approx(25 / 30)  # (28/30 + 22/30) / 2
    assert tiny["peak_rss_ratio"]["median"] == pytest.approx(0.5)
    assert tiny["ours"]["phases_seconds"]["training"]["median"] == pytest.approx(20.0)

    report = {"schema_version": 1, "environment": {}, "targets": {}, "fp8": {"supported": True}, "peer": section}
    report["target_checks"] = target_checks(report, "tiny")
    check = report["target_checks"]["peer_whole_run_ratio_tiny"]
    assert check["limit"] == 0.8 and check["met"] is False and "peer_step_ratio_small" not in report["target_checks"]
    validate_report(report)  # a peer-only report is complete
    table = format_table(report)
    assert "| tiny, 128 px | 10 / 40 | 0.500 ±0% | 0.500 ±20% | 1.00 ±20% | 30.0 s ±0% | 25.0 s ±12% | 0.83 ±12% | 800 MiB ±0% " \
           "| 400 MiB ±0% | 0.50 ±0% | 176 / 242 |" in table
    assert "| process start to first model call (imports, loading) | 9.00 ±0% | 4.00 ±75% |" in table
    assert "| process start to LoRA file written (ours / script per pair: tiny 0.83 ±12%) | 29.60 ±0% | 24.60 ±12% |" in table
    assert "| peer_whole_run_ratio_tiny | 0.833 | 0.8 | False |" in table

    del tiny["ours"]["peak_rss_bytes"]
    with pytest.raises(SchemaError, match="peer.sizes.tiny.ours.peak_rss_bytes"):
        validate_report(report)


def test_peer_section_needs_the_script(tmp_path):
    from tools import bench

    with pytest.raises(UserError, match="--peer_script"):
        bench.main(["--sections", "peer", "--workdir", str(tmp_path)])
    with pytest.raises(UserError, match="--peer_script .*not found"):
        peer.check_peer_python(sys.executable, tmp_path / "missing.py")


def test_probe_ignores_shape_only_calls_on_the_meta_device():
    """Our memory pre-flight runs the UNet on meta tensors before the models load; that computes nothing
    and must not open the probe's UNet window (it made "other set-up" negative)."""
    import torch

    from library.diagnostics.benchmark.peers import peer_probe

    unet = type("UNet2DConditionModel", (), {})()
    saved = dict(peer_probe.events["windows"])
    peer_probe.events["windows"].clear()
    try:
        peer_probe._pre_hook(unet, (torch.empty(1, 4, 8, 8, device="meta"),))
        peer_probe._post_hook(unet, (torch.empty(1, 4, 8, 8, device="meta"),), None)
        assert "unet" not in peer_probe.events["windows"]
        peer_probe._pre_hook(unet, (torch.zeros(1, 4, 8, 8),))
        assert peer_probe.events["windows"]["unet"]["calls"] == 1
    finally:
        peer_probe.events["windows"].clear()
        peer_probe.events["windows"].update(saved)
