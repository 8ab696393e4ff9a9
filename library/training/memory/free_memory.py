"""How much memory a training process can still take, before it loads anything.

  - a GPU: its free memory as the driver reports it (`torch.cuda.mem_get_info`, other processes'
    use included), for the GPU this process trains on (LOCAL_RANK, as accelerate assigns them);
  - the CPU: the kernel's MemAvailable (free memory plus what page cache it can drop), and, inside
    a container or a job with a memory limit (cgroup v2 memory.max, v1 memory.limit_in_bytes), what
    is left under that limit. The OOM killer acts on whichever runs out first. Page cache that the
    kernel can drop (inactive file pages) does not count as used under the limit.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
_NO_LIMIT = 1 << 60  # cgroup v1 writes "no limit" as a huge number (9223372036854771712)


@dataclass
class FreeMemory:
    bytes: int
    where: str  # "free VRAM on cuda:0", "RAM available (MemAvailable)", "left under the memory limit of ..."


def mem_available(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return None if text == "max" else int(text) if text.isdigit() else None


def _inactive_file(stat: Path) -> int:
    try:
        for line in stat.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name in ("inactive_file", "total_inactive_file"):
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def cgroup_room(proc_cgroup: Path = Path("/proc/self/cgroup"), root: Path = CGROUP_ROOT) -> tuple[int, Path] | None:
    """(bytes left under this process's cgroup memory limit, the limit file), or None without a limit."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        relative = path.lstrip("/")
        if controllers == "":  # cgroup v2
            candidates = [(root / relative, "memory.max", "memory.current"), (root, "memory.max", "memory.current")]
        elif "memory" in controllers.split(","):  # cgroup v1
            candidates = [(root / "memory" / relative, "memory.limit_in_bytes", "memory.usage_in_bytes"),
                          (root / "memory", "memory.limit_in_bytes", "memory.usage_in_bytes")]
        else:
            continue
        for folder, limit_name, usage_name in candidates:  # inside a container the process's path may not be mounted
            limit, usage = _read_int(folder / limit_name), _read_int(folder / usage_name)
            if limit is None or usage is None:
                continue
            if limit >= _NO_LIMIT:
                break
            return max(0, limit - max(0, usage - _inactive_file(folder / "memory.stat"))), folder / limit_name
    return None


def free_memory(device_type: str, local_rank: int | None = None) -> FreeMemory | None:
    """What this process can still allocate on `device_type` ("cuda" or "cpu"); None when unknown."""
    if device_type == "cuda":
        import torch

        index = int(os.environ.get("LOCAL_RANK", "0") or 0) if local_rank is None else local_rank
        free, _ = torch.cuda.mem_get_info(index)
        return FreeMemory(int(free), f"free VRAM on cuda:{index}")
    if device_type != "cpu":
        return None
    available = mem_available()
    room = cgroup_room()
    if room is not None and (available is None or room[0] < available):
        return FreeMemory(room[0], f"RAM left under the memory limit of {room[1]}")
    return None if available is None else FreeMemory(available, "RAM available (MemAvailable)")
