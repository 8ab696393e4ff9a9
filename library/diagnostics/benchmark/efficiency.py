"""Compute efficiency of the training step: achieved FLOP/s against this machine's GEMM rate.

In one process (the same threads, the same moment): the FLOPs of one training forward + backward
of the UNet with the LoRA attached, counted by `torch.utils.flop_counter.FlopCounterMode` (matmuls,
convolutions and attention: what the hardware's fast kernels do); the fp32 GEMM rate of this CPU
(a square matmul, best of several, measured before and after the run); and our step time
(Trainer.run(), every optimizer step time-stamped). The compute limit is FLOPs / GEMM rate: the
step time if every FLOP ran at matmul speed and nothing else cost anything.
"""
from __future__ import annotations

import statistics
import time

from library.diagnostics.benchmark.training import _step_times


def gemm_rate(size: int = 1024, repeats: int = 8) -> float:
    """FLOP/s of an fp32 size x size matmul on the current threads (the best of `repeats`)."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - started)
    return 2 * size ** 3 / best


def run_efficiency(params: dict) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from library.training.config.config_loader import resolve_config
    from library.training.loop import Trainer

    resolved = resolve_config(["--config_file", params["config"]])
    trainer = Trainer(resolved)
    trainer.setup()
    rate_before = gemm_rate()
    counted = {}
    batch_loss = trainer.objective.batch_loss

    def counted_loss(*args, **kwargs):  # the first batch: forward and backward under the FLOP counter
        if counted:
            return batch_loss(*args, **kwargs)
        with FlopCounterMode(display=False) as counter:
            loss = batch_loss(*args, **kwargs)
            loss.backward(retain_graph=True)  # counted here; the trainer's own backward then runs as usual
        for p in trainer.trainable:
            p.grad = None
        counted["flops"] = counter.get_total_flops()
        counted["by_op"] = {str(op): n for op, n in sorted(counter.get_flop_counts().get("Global", {}).items(),
                                                            key=lambda item: -item[1])[:8]}
        return loss

    marks = []
    step = trainer.optimizer_step

    def timed_step():
        logs = step()
        marks.append(time.perf_counter())
        return logs

    trainer.objective.batch_loss, trainer.optimizer_step = counted_loss, timed_step
    marks.append(time.perf_counter())
    trainer.run()
    rate = max(rate_before, gemm_rate())
    steps = _step_times(marks, params.get("warmup", 1))
    step_seconds = statistics.median(steps)
    limit = counted["flops"] / rate
    return {"flops_per_step": counted["flops"], "flops_by_op": counted["by_op"], "gemm_flops_per_second": rate,
            "step_seconds": step_seconds, "step_times": steps, "achieved_flops_per_second": counted["flops"] / step_seconds,
            "efficiency": counted["flops"] / step_seconds / rate, "compute_limit_seconds": limit,
            "step_over_limit": step_seconds / limit, "threads": torch.get_num_threads()}
