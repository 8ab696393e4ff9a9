"""`--estimate_memory` against the memory a real training step adds to the process.

`run_calibration` (a benchmark worker task: its own process) estimates the config, then trains it
for real and measures each optimizer step (forward, backward, clipping, optimizer step) with
`StepMemory`: RssAnon after `malloc_trim` on the CPU, the CUDA allocator's peak on a GPU. Step 1
also creates the optimizer state and touches the mapped weights for the first time, so the figure
compared is the largest addition of the later steps, against the estimate's working memory
(activations + LoRA gradients, i.e. what one pass allocates on top of the weights and state).

The same steps can also be counted by `AllocationCounter` (tensor bytes, `count_tensors`), to tell
the estimator's error from the allocator's overhead.
"""
from __future__ import annotations

import time

from library.diagnostics.benchmark.process_memory import StepMemory, rss_anon_bytes


def run_calibration(params: dict) -> dict:
    """params: config (toml path), steps (>= 2), count_tensors (also count the last step's tensors)."""
    import torch

    from library.training.config.config_loader import resolve_config
    from library.training.memory.memory_estimate import AllocationCounter, estimate_memory
    from library.training.loop import Trainer

    resolved = resolve_config(["--config_file", params["config"]])
    estimate = estimate_memory(resolved.args).as_dict()
    trainer = Trainer(resolved)
    trainer.setup()
    cuda = trainer.device.type == "cuda"
    steps, counted = [], []
    state = {"meter": None, "counter": None, "index": 0}
    total = resolved.args.max_train_steps
    batch_loss, optimizer_step = trainer.objective.batch_loss, trainer.optimizer_step

    marks = []

    def measured_loss(*args, **kwargs):
        state["index"] += 1
        marks.append(time.perf_counter())
        if params.get("count_tensors") and state["index"] == total:  # the last step: tensor bytes
            state["counter"] = AllocationCounter().__enter__()
        else:
            state["meter"] = StepMemory(cuda=cuda).__enter__()
        return batch_loss(*args, **kwargs)

    def measured_step():
        logs = optimizer_step()
        marks.append(time.perf_counter())
        if state["counter"] is not None:
            state["counter"].__exit__(None, None, None)
            counted.append(state["counter"].peak)
            state["counter"] = None
        else:
            state["meter"].__exit__(None, None, None)
            steps.append(state["meter"].as_dict())
        return logs

    trainer.objective.batch_loss, trainer.optimizer_step = measured_loss, measured_step
    before = rss_anon_bytes()
    trainer.run()
    later = [s["added"] for s in steps[1:]] or [steps[0]["added"]]
    working = estimate["activations"] + estimate["lora_gradients"]
    measured = max(later)
    durations = [b - a for a, b in zip(marks[::2], marks[1::2])]  # batch loss to the end of the optimizer step
    return {"estimate": estimate, "steps": steps, "step_seconds": durations, "step_added": measured, "estimated_working": working,
            "ratio": working / measured if measured > 0 else None, "tensor_peak": counted[0] if counted else None,
            "rss_anon_before_training": before, "threads": torch.get_num_threads()}
