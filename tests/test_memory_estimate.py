"""--estimate_memory: a breakdown from shapes alone, within 15% of the memory a real training step
adds to its own process (measured in a separate process)."""
from __future__ import annotations

import pytest

from library.diagnostics.benchmark import training
from library.diagnostics.benchmark.runner import run_task
from library.training.config.config_loader import resolve_config
from library.training.memory.memory_estimate import AllocationCounter, estimate_memory


def _config(tmp_path, model, resolution, batch_size, checkpointing, name, steps=2):
    train_dir = training.prepare_dataset(tmp_path, resolution, count=4)
    config = training.training_config(model, train_dir, tmp_path / f"out_{name}", resolution, batch_size, 8, steps,
                                      gradient_checkpointing=checkpointing)
    return training.write_config(tmp_path / f"{name}.toml", config)


def test_estimate_memory_prints_a_breakdown_without_loading_weights(tmp_path, tiny_single_file, monkeypatch, capsys):
    import library.models.sdxl_loader as loader
    from sdxl_train_network import main

    monkeypatch.setattr(loader, "load_sdxl", lambda *a, **k: pytest.fail("--estimate_memory loaded the model"))
    config = _config(tmp_path, tiny_single_file, 64, 2, False, "cli")
    assert main(["--config_file", str(config), "--estimate_memory"]) == 0
    out = capsys.readouterr().out
    for part in ("estimated peak accelerator memory", "base weights", "LoRA weights", "LoRA gradients", "optimizer state",
                 "activations", "caches in host memory", "GPU accuracy unverified"):
        assert part in out
    assert not (tmp_path / "out_cli").exists()


def test_estimate_grows_with_batch_and_shrinks_with_checkpointing(tmp_path, tiny_single_file):
    def activations(batch, checkpointing):
        config = _config(tmp_path, tiny_single_file, 64, batch, checkpointing, f"a{batch}{checkpointing}")
        return estimate_memory(resolve_config(["--config_file", str(config)]).args).activations

    plain = activations(2, False)
    assert activations(4, False) > plain
    assert activations(2, True) < plain


def test_allocation_counter_follows_storages():
    import torch

    with AllocationCounter() as counter:
        a = torch.zeros(1000)  # 4000 bytes
        view = a[:10]
        b = torch.ones(500)  # 2000 bytes
        del a
        assert counter.live == 6000  # the view keeps a's storage
        del view, b
    assert counter.live == 0 and counter.peak == 6000


def test_allocation_counter_ignores_storages_that_existed_before():
    """A Linear reaches its weight through a transposed view: that is no allocation (the old
    counter counted every base weight this way, and kept it live)."""
    import torch

    linear = torch.nn.Linear(256, 256)
    x = torch.randn(4, 256, requires_grad=True)
    with AllocationCounter() as counter:
        linear(x).sum().backward()
    weight_bytes = 256 * 256 * 4
    # what is new: the weight's gradient, the bias's and x's gradients, the output, a few scalars
    assert weight_bytes <= counter.live < weight_bytes + 16 * 1024
    assert counter.peak < weight_bytes + 16 * 1024


def test_estimate_within_15_percent_of_the_memory_a_step_adds(tmp_path):
    """--estimate_memory's working memory against the anonymous memory a real training step adds to
    its own process (RssAnon, after malloc_trim; a separate process, with the fixed mmap threshold
    under which freed memory goes back at once; docs/performance.md)."""
    from library.diagnostics.benchmark.models import write_model
    from library.diagnostics.benchmark.process_memory import TRACKING_MALLOC_ENV

    model = write_model("small", tmp_path / "models")
    config = _config(tmp_path, model, 128, 2, False, "calibration", steps=3)
    result = run_task("calibration", {"config": str(config), "count_tensors": True, "threads": 1}, env=TRACKING_MALLOC_ENV)
    assert len(result["steps"]) == 2  # steps 1 and 2 measured by the process's memory, step 3 counted
    assert result["step_added"] > 20 * 2**20  # tens of MiB of activations: far above the process's noise
    assert result["ratio"] == pytest.approx(1.0, abs=0.15)
    # the counter on the real tensors agrees with the estimate from meta tensors (which also counts
    # the CPU's per-call copies of convolution weights, invisible to a tensor counter)
    assert result["estimate"]["conv_workspace"] == 256 * 512 * 9 * 4  # small's widest convolution, fp32
    assert result["tensor_peak"] == pytest.approx(result["estimated_working"], rel=0.15)
