"""gradient_checkpointing_policy: "selective" keeps the matmul and attention outputs of the deepest
transformer blocks (no GEMM recomputed there in backward), trains the same numbers as "full", and
"auto" is decided by the memory check (selective when it fits)."""
from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tests.training_fixtures import base_config, lora_tensors, make_concept_images, train_in_process, write_config

SMALL = dict(resolution="32,32", min_bucket_reso=32, max_bucket_reso=64, train_batch_size=1, max_train_steps=2,
             gradient_checkpointing=True, network_train_unet_only=True)


class MatmulCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default):
            self.count += 1
        return func(*args, **(kwargs or {}))


def test_selective_trains_the_same_lora_with_fewer_matmuls(tiny_single_file, tmp_path):
    make_concept_images(tmp_path / "img" / "1_a", count=2, sizes=[(32, 32)])
    results = {}
    for policy in ("full", "selective"):
        trainer, final = train_in_process(tmp_path, tiny_single_file, tmp_path / "img", policy, gradient_checkpointing_policy=policy, **SMALL)
        with MatmulCounter() as counter:  # one more batch: forward and backward, the recompute included
            trainer.objective.batch_loss([0], [123], 1, 2).backward()
        results[policy] = (lora_tensors(final), counter.count)
    (full, full_calls), (selective, selective_calls) = results["full"], results["selective"]
    assert all(torch.equal(full[key], selective[key]) for key in full)  # the same numbers
    assert any(v.abs().sum() > 0 for k, v in selective.items() if "lora_up" in k)
    assert selective_calls < full_calls  # the deepest blocks' GEMMs are not recomputed


def test_auto_is_selective_when_it_fits_and_full_when_it_does_not(tiny_single_file, tmp_path, monkeypatch):
    from types import SimpleNamespace

    from library.training.memory import memory_preflight
    from library.training.config.config_loader import resolve_config
    from library.training.memory.memory_estimate import estimate_memory

    make_concept_images(tmp_path / "img" / "1_a", count=2, sizes=[(32, 32)])
    config = base_config(tiny_single_file, tmp_path / "img", tmp_path / "out", skip_memory_check=None, **SMALL)
    path = write_config(tmp_path / "c.toml", config)

    def needs(policy):
        args = resolve_config(["--config_file", str(path), "--gradient_checkpointing_policy", policy]).args
        estimate = estimate_memory(args, images=2)
        return estimate.accelerator_total + estimate.caches_host

    full, selective = needs("full"), needs("selective")
    assert selective > full
    for free, expected in ((int(selective / 0.7), "selective"), (int(selective / 0.8) - 1, "full")):
        monkeypatch.setattr(memory_preflight, "free_memory", lambda device, free=free: SimpleNamespace(bytes=free, where="test memory"))
        said = []
        args = resolve_config(["--config_file", str(path)]).args
        assert args.gradient_checkpointing_policy == "auto"
        assert memory_preflight.check_memory(args, images=2, device_type="cpu", say=said.append) == expected
        assert args.gradient_checkpointing_policy == "auto"  # the decision is returned, the config stays as resolved
        assert any('"auto" -> "selective"' in line for line in said) == (expected == "selective")
    args = resolve_config(["--config_file", str(path), "--skip_memory_check"]).args
    assert memory_preflight.check_memory(args, images=2, device_type="cpu") == "full"  # no check, no extra memory
