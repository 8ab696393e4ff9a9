"""Before any model loads: does the run fit in the memory its device has free?

The run's own `--estimate_memory` figure (library/training/memory/memory_estimate.py: weights, LoRA,
gradients, optimizer state and the peak of one training step, from shapes only) is compared with
what the device has free (library/training/memory/free_memory.py). On the CPU the latent and text caches
live in the same RAM and every process of the machine needs its own share, so they count too.

  - more than is free: the run stops with one line naming both numbers and the settings that
    would fit (each tried through the same estimate), unless `skip_memory_check` is set;
  - within 20% of it: a notice, since the estimate counts tensor bytes only (glibc's malloc keeps
    part of what a CPU step frees, docs/performance.md; CUDA's caching allocator and cuDNN's
    workspaces come on top on a GPU), and the run goes on.

It also decides `gradient_checkpointing_policy = "auto"`: "selective" (faster steps, more activation
memory; library/training/residency/checkpointing.py) when the run with it still needs at most 80% of the free
memory, else "full". Without a memory check (skip_memory_check, or no free-memory figure) auto is full.
"""
from __future__ import annotations

import os

from library.errors import UserError
from library.training.memory.free_memory import free_memory

BORDERLINE = 0.8  # a need above this share of the free memory gets a notice

# settings that lower the peak, in kohya's option names, tried one at a time and then together
_REMEDIES = (
    ("gradient_checkpointing = true", {"gradient_checkpointing": True}),
    ("cache_text_encoder_outputs = true with network_train_unet_only = true",
     {"cache_text_encoder_outputs": True, "network_train_unet_only": True}),
    ("fp8_base = true", {"fp8_base": True}),  # fp8 weights compute in a half dtype: see _remedies
)


def size_text(count: int) -> str:
    gib = count / (1 << 30)
    if gib >= 1:
        return f"{gib:.1f} GiB"
    mib = count / (1 << 20)
    return f"{mib:.1f} MiB" if mib < 10 else f"{mib:.0f} MiB"


def _need(estimate, device_type: str, processes: int) -> int:
    """Bytes the run takes on its device: per GPU, or for all processes sharing the CPU's RAM."""
    if device_type == "cpu":
        return (estimate.accelerator_total + estimate.caches_host) * processes
    return estimate.accelerator_total


def _remedies(args) -> list[tuple[str, dict]]:
    """_REMEDIES as they apply to this config: fp8 weights need mixed_precision bf16 or fp16."""
    remedies = []
    for text, changes in _REMEDIES:
        if "fp8_base" in changes and args.mixed_precision not in ("bf16", "fp16"):
            text, changes = f'{text} with mixed_precision = "bf16"', {**changes, "mixed_precision": "bf16"}
        remedies.append((text, changes))
    return remedies


def _applies(args, changes: dict) -> bool:
    if "fp8_base" in changes and (args.fp8_base or args.fp8_base_unet):
        return False
    return any(getattr(args, key) != value for key, value in changes.items())


def _fitting_settings(args, images: int, device_type: str, processes: int, free: int) -> str:
    """'settings that would fit: ...' or what even all of them together would need."""
    from library.training.memory.memory_estimate import estimate_memory

    def need_with(changes: dict) -> int:
        return _need(estimate_memory(args.replace(**changes), images=images), device_type, processes)

    fitting, combined = [], {}
    for text, changes in _remedies(args):
        if not _applies(args, changes):
            continue
        combined.update(changes)
        need = need_with(changes)
        if need <= free:
            fitting.append(f"{text} ({size_text(need)})")
    batch = args.train_batch_size
    while batch > 1:  # the largest batch that fits, with gradient_accumulation_steps keeping the effective batch
        batch //= 2
        need = need_with({"train_batch_size": batch})
        if need <= free:
            fitting.append(f"train_batch_size = {batch} with gradient_accumulation_steps = "
                           f"{args.gradient_accumulation_steps * args.train_batch_size // batch} ({size_text(need)})")
            break
    if fitting:
        return "settings that would fit: " + "; ".join(fitting)
    if args.train_batch_size > 1:
        combined["train_batch_size"] = 1
    if combined:
        need = need_with(combined)
        names = ", ".join(f"{key} = {value!r}" if isinstance(value, str) else f"{key} = {str(value).lower()}"
                          for key, value in combined.items())
        if need <= free:
            return f"it would fit with all of {names} ({size_text(need)})"
        return f"even with {names} it needs {size_text(need)}: lower the resolution or use a device with more memory"
    return "lower the resolution or use a device with more memory"


def check_memory(args, images: int, device_type: str | None = None, say=print) -> str:
    """Stop (UserError) when the run cannot fit in the free memory; `say` a notice when it is close.
    `images`: distinct training and validation images (for the size of the caches). Returns the
    gradient checkpointing policy to use ("auto" decided: "selective" when it fits, else "full")."""
    policy = args.gradient_checkpointing_policy
    deciding = args.gradient_checkpointing and policy == "auto"
    if policy == "auto":
        policy = "full"  # unless the check below finds room for selective
    if args.skip_memory_check:
        return policy
    from library.training.memory.memory_estimate import estimate_memory
    from library.training.residency.placement import compute_device

    device_type = device_type or compute_device().type
    free = free_memory(device_type)
    if free is None:
        return policy
    # processes on this machine share its RAM; each GPU has its own process
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1) if device_type == "cpu" else 1
    if deciding and _selective_fits(args, images, device_type, processes, free, say):
        return "selective"
    args = args.replace(gradient_checkpointing_policy=policy)
    estimate = estimate_memory(args, images=images)
    need = _need(estimate, device_type, processes)
    if need <= BORDERLINE * free.bytes:
        return policy
    described = _describe(estimate, device_type, processes, need)
    if need <= free.bytes:
        if int(os.environ.get("RANK", "0") or 0) != 0:  # one notice per run, not one per process
            return policy
        caveat = ("glibc's malloc keeps part of what each step frees, see docs/performance.md" if device_type == "cpu"
                  else "CUDA's caching allocator and cuDNN's workspaces come on top")
        say(f"notice: this run needs about {described}, close to the {size_text(free.bytes)} of {free.where}; it may not fit "
            f"(the estimate counts tensor bytes; {caveat})")
        return policy
    remedy = _fitting_settings(args, images, device_type, processes, free.bytes)
    raise UserError(f"this run needs about {described}, but there is only {size_text(free.bytes)} of {free.where}; {remedy}; "
                    "or set skip_memory_check = true to try anyway")


def _selective_fits(args, images: int, device_type: str, processes: int, free, say) -> bool:
    """gradient_checkpointing_policy "auto": selective when it needs at most BORDERLINE of the free memory."""
    from library.training.memory.memory_estimate import estimate_memory

    trial = args.replace(gradient_checkpointing_policy="selective")
    need = _need(estimate_memory(trial, images=images), device_type, processes)
    if need > BORDERLINE * free.bytes:
        return False
    if int(os.environ.get("RANK", "0") or 0) == 0:
        say(f'notice: gradient checkpointing keeps the matmul outputs of the deepest transformer blocks (gradient_checkpointing_policy '
            f'"auto" -> "selective": the same numbers, faster steps); the run needs about {size_text(need)} of the '
            f'{size_text(free.bytes)} of {free.where}; set it to "full" for the least memory')
    return True


def _describe(estimate, device_type: str, processes: int, need: int) -> str:
    parts = f"{size_text(estimate.accelerator_total)} at its peak"
    if device_type == "cpu" and estimate.caches_host:
        parts += f" + {size_text(estimate.caches_host)} of cached latents and text"
    if processes > 1:
        parts = f"{processes} processes x ({parts})"
    return f"{size_text(need)} of memory (--estimate_memory: {parts})"

