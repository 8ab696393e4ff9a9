"""The memory pre-flight: the run's own --estimate_memory figure against the device's free memory,
before any model loads. Too little stops with one line naming both numbers and the settings that
would fit (each number recomputed here through the estimator); close is a notice; skip_memory_check
goes on anyway. The free-memory readers are checked on real /proc and cgroup file layouts."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from library.entry import run_cli

from library.errors import UserError
from library.training.memory import memory_preflight
from library.training.memory.free_memory import FreeMemory, cgroup_room, free_memory, mem_available
from library.training.memory.memory_preflight import size_text
from tests.training_fixtures import base_config, make_concept_images, write_config


@pytest.fixture(scope="module")
def train_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("memory_data")
    make_concept_images(root / "2_catwomen", count=4)
    return root


def _config(tmp_path, model, train_dir, **overrides) -> Path:
    settings = dict(skip_memory_check=None, train_batch_size=4, resolution="128,128", cache_latents=True)
    settings.update(overrides)
    return write_config(tmp_path / "c.toml", base_config(model, train_dir, tmp_path / "out", **settings))


def _need(config: Path, images: int = 4, **changes) -> int:
    """What the pre-flight should compute: the estimate's peak plus the host caches (a CPU run)."""
    from library.training.config.config_loader import resolve_config
    from library.training.memory.memory_estimate import estimate_memory

    args = resolve_config(["--config_file", str(config)]).args.replace(**changes)
    estimate = estimate_memory(args, images=images)
    return estimate.accelerator_total + estimate.caches_host, estimate


def _digests(*roots: Path) -> dict:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for root in roots
            for p in ([root] if root.is_file() else sorted(root.rglob("*"))) if p.is_file()}


def _record_estimates(monkeypatch) -> list:
    """[(changed settings, need)] of every estimate the pre-flight makes (the real estimator, watched)."""
    import library.training.memory.memory_estimate as memory_estimate

    real, seen = memory_estimate.estimate_memory, []
    watched = ("gradient_checkpointing", "train_batch_size", "cache_text_encoder_outputs", "fp8_base", "mixed_precision")

    def estimate_memory(args, images=None):
        estimate = real(args, images=images)
        seen.append(({key: getattr(args, key) for key in watched}, estimate.accelerator_total + estimate.caches_host))
        return estimate

    monkeypatch.setattr(memory_estimate, "estimate_memory", estimate_memory)
    return seen


def test_a_run_too_big_for_the_free_memory_stops_before_loading_and_says_what_fits(tiny_single_file, train_dir, tmp_path,
                                                                                    monkeypatch, capsys):
    from sdxl_train_network import main
    import library.models.sdxl_loader as loader
    from library.models.tiny_sdxl import TE1_WIDTH, TE2_WIDTH

    # text outputs cached and fp8 weights already: checkpointing and a smaller batch are the remedies left to try
    config = _config(tmp_path, tiny_single_file, train_dir, cache_text_encoder_outputs=True, network_train_unet_only=True,
                     fp8_base=True, mixed_precision="bf16")
    need, estimate = _need(config)
    # the host caches: 4 latents of 128 px (4 x 16 x 16 float32) and 4 text outputs (77 x 192 context + pooled)
    assert estimate.caches_host == 4 * (4 * 16 * 16 * 4) + 4 * (77 * (TE1_WIDTH + TE2_WIDTH) + TE2_WIDTH) * 4
    free = need - 1
    monkeypatch.setattr(memory_preflight, "free_memory", lambda device: FreeMemory(free, "RAM available (MemAvailable)"))
    monkeypatch.setattr(loader, "load_sdxl", lambda *a, **k: pytest.fail("the model was loaded before the memory check"))
    seen = _record_estimates(monkeypatch)
    inputs = _digests(train_dir, tiny_single_file)
    capsys.readouterr()
    assert run_cli(main, ["--config_file", str(config)]) == 2
    err = capsys.readouterr().err
    # as configured (the same figure as --estimate_memory's), with checkpointing, with half the batch
    assert [(s["gradient_checkpointing"], s["train_batch_size"]) for s, _ in seen] == [(False, 4), (True, 4), (False, 2)]
    (_, as_configured), (_, checkpointing), (_, batch_2) = seen
    assert as_configured == need and checkpointing < free and batch_2 < free
    expected = (f"error: this run needs about {size_text(need)} of memory (--estimate_memory: {size_text(estimate.accelerator_total)} "
                f"at its peak + {size_text(estimate.caches_host)} of cached latents and text), but there is only {size_text(free)} of "
                f"RAM available (MemAvailable); settings that would fit: gradient_checkpointing = true ({size_text(checkpointing)}); "
                f"train_batch_size = 2 with gradient_accumulation_steps = 2 ({size_text(batch_2)}); or set skip_memory_check = "
                "true to try anyway")
    assert "Traceback" not in err and err.strip().splitlines() == [expected]
    assert not (tmp_path / "out").exists() or not [p for p in (tmp_path / "out").iterdir() if not p.name.startswith(".")]
    assert _digests(train_dir, tiny_single_file) == inputs


def test_close_is_a_notice_and_skip_memory_check_goes_on(tiny_single_file, train_dir, tmp_path, monkeypatch, capsys):
    from sdxl_train_network import main

    config = _config(tmp_path, tiny_single_file, train_dir, max_train_steps=1, train_batch_size=2, resolution="64,64")
    need, _ = _need(config)
    free = int(need / 0.9)  # fits, but within 20%
    monkeypatch.setattr(memory_preflight, "free_memory", lambda device: FreeMemory(free, "RAM available (MemAvailable)"))
    capsys.readouterr()
    assert run_cli(main, ["--config_file", str(config)]) == 0
    out = capsys.readouterr().out
    assert (f"notice: this run needs about {size_text(need)} of memory (--estimate_memory: " in out
            and f"close to the {size_text(free)} of RAM available (MemAvailable); it may not fit (the estimate counts tensor "
                "bytes; glibc's malloc keeps part of what each step frees, see docs/performance.md)" in out)
    assert (tmp_path / "out" / "tiny_lora.safetensors").exists()
    # far too little, but the user goes on anyway: no estimate, no stop
    monkeypatch.setattr(memory_preflight, "free_memory", lambda device: FreeMemory(need // 10, "RAM available (MemAvailable)"))
    assert run_cli(main, ["--config_file", str(config), "--output_dir", str(tmp_path / "anyway"), "--skip_memory_check"]) == 0
    assert "this run needs about" not in capsys.readouterr().out
    assert (tmp_path / "anyway" / "tiny_lora.safetensors").exists()


def test_on_a_gpu_the_free_vram_is_compared_with_the_peak(tiny_single_file, train_dir, tmp_path, monkeypatch):
    """The CUDA branch on this CPU-only machine: the driver's answer is the one thing supplied. Every
    remedy is already in the config, so the line says what is left."""
    import torch

    from library.training.config.config_loader import resolve_config

    config = _config(tmp_path, tiny_single_file, train_dir, cache_text_encoder_outputs=True, network_train_unet_only=True,
                     fp8_base=True, mixed_precision="bf16", gradient_checkpointing=True, train_batch_size=1,
                     gradient_checkpointing_policy="full")  # (auto would first try the selective policy)
    calls = []
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda index: calls.append(index) or (1 << 20, 80 << 30))
    seen = _record_estimates(monkeypatch)
    args = resolve_config(["--config_file", str(config)]).args
    with pytest.raises(UserError) as caught:
        memory_preflight.check_memory(args, images=4, device_type="cuda")
    ((_, with_caches),) = seen
    peak = with_caches - (4 * (4 * 16 * 16 * 4) + 4 * (77 * 192 + 128) * 4)  # on a GPU the caches stay in host memory
    assert str(caught.value) == (
        f"this run needs about {size_text(peak)} of memory (--estimate_memory: {size_text(peak)} at its peak), but there is only "
        "1.0 MiB of free VRAM on cuda:1; lower the resolution or use a device with more memory; or set skip_memory_check = true "
        "to try anyway")
    assert calls == [1]  # the GPU of this process (LOCAL_RANK), not the first one


def test_free_memory_readers_on_real_file_layouts(tmp_path, monkeypatch):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24683772 kB\nMemFree:        23431660 kB\nMemAvailable:   22000000 kB\n")
    assert mem_available(meminfo) == 22000000 * 1024
    # cgroup v2: a 16 GiB limit, 6 GiB used of which 2 GiB is droppable page cache
    v2 = tmp_path / "v2"
    (v2 / "job").mkdir(parents=True)
    (v2 / "job" / "memory.max").write_text(f"{16 << 30}\n")
    (v2 / "job" / "memory.current").write_text(f"{6 << 30}\n")
    (v2 / "job" / "memory.stat").write_text(f"anon 4000\nfile 5000\ninactive_file {2 << 30}\nactive_file 0\n")
    (tmp_path / "cgroup_v2").write_text("0::/job\n")
    assert cgroup_room(tmp_path / "cgroup_v2", v2) == ((16 << 30) - (4 << 30), v2 / "job" / "memory.max")
    (v2 / "job" / "memory.max").write_text("max\n")
    assert cgroup_room(tmp_path / "cgroup_v2", v2) is None
    # cgroup v1 (this machine's layout): no limit is a huge number; a container sees its own cgroup at the mount's root
    v1 = tmp_path / "v1"
    (v1 / "memory").mkdir(parents=True)
    (v1 / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    (v1 / "memory" / "memory.usage_in_bytes").write_text("890716160\n")
    (tmp_path / "cgroup_v1").write_text("4:memory:/process_api/b262\n3:cpuset:/\n0::/\n")
    assert cgroup_room(tmp_path / "cgroup_v1", v1) is None
    (v1 / "memory" / "memory.limit_in_bytes").write_text(f"{8 << 30}\n")
    (v1 / "memory" / "memory.stat").write_text("cache 100\ntotal_inactive_file 391135232\n")
    assert cgroup_room(tmp_path / "cgroup_v1", v1) == ((8 << 30) - (890716160 - 391135232), v1 / "memory" / "memory.limit_in_bytes")
    # this machine: the smaller of MemAvailable and the room under a limit
    real = free_memory("cpu")
    available = mem_available()
    assert real is not None and 0 < real.bytes <= available * 1.05
