"""Decisions every training process takes together, and per-process state gathered for a save.

With several processes a branch taken by one and not the others leaves the others waiting in the
next collective (a hang under NCCL, a mismatch error under gloo). So whatever can differ between
processes and changes control flow goes through here: a stop request that reached one process,
the union of cache work, a non-finite loss. With one process nothing is communicated.

Random number generators are per process (each seeds seed + rank for dropout, and on a GPU each
device has its own generator), so a resumable state holds every process's CPU and CUDA RNG state
and each process restores its own.
"""
from __future__ import annotations

import torch


def any_process(accelerator, flag: bool) -> bool:
    """True on every process when `flag` is true on at least one."""
    return max_over_processes(accelerator, int(bool(flag))) > 0


def max_over_processes(accelerator, value: int) -> int:
    """The largest of the processes' integers, on every process (one small all-reduce)."""
    if accelerator.num_processes == 1:
        return int(value)
    import torch.distributed as dist

    tensor = torch.tensor([int(value)], dtype=torch.int64, device=accelerator.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def value_of_process_zero(accelerator, value):
    """Process 0's `value` (any picklable object), on every process."""
    if accelerator.num_processes == 1:
        return value
    from accelerate.utils import gather_object

    return gather_object([value])[0]


def union_over_processes(accelerator, values) -> list:
    """The sorted union of every process's values (hashable, orderable), on every process."""
    if accelerator.num_processes == 1:
        return sorted(set(values))
    from accelerate.utils import gather_object

    merged = set()
    for part in gather_object([sorted(set(values))]):
        merged.update(part)
    return sorted(merged)


def rng_state(device: torch.device) -> dict:
    """This process's random state: the CPU generator, and its CUDA device's when training on one."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def gathered_rng_states(accelerator) -> list[dict]:
    """Every process's rng_state, in rank order (a collective: every process calls it)."""
    own = rng_state(torch.device(accelerator.device))
    if accelerator.num_processes == 1:
        return [own]
    from accelerate.utils import gather_object

    return gather_object([own])


def restore_rng_state(saved: dict, rank: int, device: torch.device, notices: list) -> None:
    """Restore this process's RNG from a state's `saved` (rng_and_extra.pt). States from before per-process
    states (one CPU state only) and states saved with another process count restore what they can."""
    per_process = saved.get("processes")
    if per_process:
        if rank >= len(per_process):
            notices.append(f"this state was saved by {len(per_process)} process(es); process {rank} continues with the random "
                           "state of process 0 (dropout will differ from an uninterrupted run)")
        own = per_process[min(rank, len(per_process) - 1)]
    else:
        own = {"torch": saved["torch"]}
    torch.set_rng_state(own["torch"])
    if device.type == "cuda":
        if own.get("cuda") is not None:
            torch.cuda.set_rng_state(own["cuda"], device)
        elif rank == 0:
            notices.append("this state holds no CUDA random state (saved on a CPU or by an older version); "
                           "dropout on the GPU will differ from an uninterrupted run")
