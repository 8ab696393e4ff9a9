"""torch.cuda (and the generator class) as a machine with N GPUs would answer, for pretend CUDA.

Availability, device count and selection, capability and properties, bf16 support, the per-device
random generators and their states, memory statistics (bytes held by live pretend-cuda tensors),
streams and events (work is synchronous: every event has happened). Nothing here runs a kernel.
"""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch

from tools.pretend_cuda.tensor import MEMORY, PretendCudaGenerator

DEVICE_NAME = "Pretend CUDA (CPU)"
CAPABILITY = (8, 9)  # Ada: bf16 and fp8 are supported, as on the cards most users train on


@dataclass
class _State:
    count: int
    total_memory: int
    current: int = 0
    generators: tuple = field(default_factory=tuple)


STATE: _State  # set by install()


def _index(device=None) -> int:
    if device is None:
        return STATE.current
    if isinstance(device, int):
        return device
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError(f"Expected a cuda device, but got: {device}")
    return STATE.current if device.index is None else device.index


# -- devices ---------------------------------------------------------------------------------------
def is_available() -> bool:
    return True


def device_count() -> int:
    return STATE.count


def current_device() -> int:
    return STATE.current


def set_device(device) -> None:
    index = _index(device)
    if not 0 <= index < STATE.count:
        raise RuntimeError(f"CUDA error: invalid device ordinal {index} (pretend CUDA has {STATE.count})")
    STATE.current = index


class device:  # noqa: N801  (torch.cuda.device is a class used as a context manager)
    def __init__(self, device):
        self.index = _index(device) if device is not None else -1
        self.previous = STATE.current

    def __enter__(self):
        self.previous = STATE.current
        if self.index >= 0:
            set_device(self.index)

    def __exit__(self, *exc):
        STATE.current = self.previous
        return False


def get_device_name(device=None) -> str:
    return DEVICE_NAME


def get_device_capability(device=None) -> tuple[int, int]:
    return CAPABILITY


def get_device_properties(device=None):
    return SimpleNamespace(name=DEVICE_NAME, total_memory=STATE.total_memory, major=CAPABILITY[0], minor=CAPABILITY[1],
                           multi_processor_count=64, is_integrated=False, is_multi_gpu_board=False,
                           uuid=f"pretend-cuda-{_index(device)}", L2_cache_size=64 << 20, warp_size=32,
                           gcnArchName="", max_threads_per_multi_processor=1536)


def is_bf16_supported(including_emulation: bool = True) -> bool:
    return True


def _noop(*args, **kwargs) -> None:
    return None


# -- random generators -----------------------------------------------------------------------------
def manual_seed(seed: int) -> None:
    STATE.generators[STATE.current].manual_seed(int(seed))


def manual_seed_all(seed: int) -> None:
    for generator in STATE.generators:
        generator.manual_seed(int(seed))


def seed() -> None:
    STATE.generators[STATE.current].seed()


def seed_all() -> None:
    for generator in STATE.generators:
        generator.seed()


def initial_seed() -> int:
    return STATE.generators[STATE.current].initial_seed()


def get_rng_state(device="cuda") -> torch.Tensor:
    return STATE.generators[_index(device)].get_state()


def set_rng_state(new_state: torch.Tensor, device="cuda") -> None:
    STATE.generators[_index(device)].set_state(new_state.cpu() if new_state.device.type != "cpu" else new_state)


def get_rng_state_all() -> list[torch.Tensor]:
    return [generator.get_state() for generator in STATE.generators]


def set_rng_state_all(new_states) -> None:
    for generator, state in zip(STATE.generators, new_states):
        generator.set_state(state)


# -- memory ----------------------------------------------------------------------------------------
def memory_allocated(device=None) -> int:
    return MEMORY.allocated


def max_memory_allocated(device=None) -> int:
    return MEMORY.peak


def reset_peak_memory_stats(device=None) -> None:
    MEMORY.peak = MEMORY.allocated


def mem_get_info(device=None) -> tuple[int, int]:
    return max(STATE.total_memory - MEMORY.allocated, 0), STATE.total_memory


def memory_stats(device=None) -> dict:
    return {"allocated_bytes.all.current": MEMORY.allocated, "allocated_bytes.all.peak": MEMORY.peak,
            "reserved_bytes.all.current": MEMORY.allocated, "reserved_bytes.all.peak": MEMORY.peak}


# -- streams and events (synchronous work) -----------------------------------------------------------
class Stream:
    def __init__(self, device=None, priority: int = 0, **kwargs):
        self.device = torch.device("cuda", _index(device))
        self.priority = priority

    def wait_stream(self, stream) -> None: ...
    def wait_event(self, event) -> None: ...
    def synchronize(self) -> None: ...
    def query(self) -> bool:
        return True

    def record_event(self, event=None):
        event = event or Event()
        event.record(self)
        return event


class Event:
    def __init__(self, enable_timing: bool = False, blocking: bool = False, interprocess: bool = False):
        self.time = None

    def record(self, stream=None) -> None:
        self.time = time.perf_counter()

    def wait(self, stream=None) -> None: ...
    def synchronize(self) -> None: ...
    def query(self) -> bool:
        return True

    def elapsed_time(self, end) -> float:
        return (end.time - self.time) * 1000.0


_STREAMS: dict[int, Stream] = {}


def current_stream(device=None) -> Stream:
    index = _index(device)
    return _STREAMS.setdefault(index, Stream(index))


default_stream = current_stream


@contextlib.contextmanager
def stream(s):
    yield s


def install_device_api(count: int) -> None:
    """Replace torch.cuda's answers and torch.Generator (cuda generators); torch is imported."""
    global STATE
    STATE = _State(count=count, total_memory=int(float(os.environ.get("PRETEND_CUDA_MEMORY_GB", "24")) * 2**30))
    STATE.generators = tuple(PretendCudaGenerator(torch.device("cuda", i)) for i in range(count))
    for generator in STATE.generators:
        generator.manual_seed(torch.initial_seed())  # CUDA's default generators start from the same default seed
    cuda = torch.cuda
    replacements = {
        "is_available": is_available, "device_count": device_count, "current_device": current_device,
        "set_device": set_device, "device": device, "get_device_name": get_device_name,
        "get_device_capability": get_device_capability, "get_device_properties": get_device_properties,
        "is_bf16_supported": is_bf16_supported, "is_initialized": lambda: True, "_lazy_init": _noop, "init": _noop,
        "synchronize": _noop, "empty_cache": _noop, "ipc_collect": _noop,
        "manual_seed": manual_seed, "manual_seed_all": manual_seed_all, "seed": seed, "seed_all": seed_all,
        "initial_seed": initial_seed, "get_rng_state": get_rng_state, "set_rng_state": set_rng_state,
        "get_rng_state_all": get_rng_state_all, "set_rng_state_all": set_rng_state_all,
        "default_generators": STATE.generators,
        "memory_allocated": memory_allocated, "max_memory_allocated": max_memory_allocated,
        "memory_reserved": memory_allocated, "max_memory_reserved": max_memory_allocated,
        "reset_peak_memory_stats": reset_peak_memory_stats, "reset_max_memory_allocated": reset_peak_memory_stats,
        "reset_accumulated_memory_stats": _noop, "mem_get_info": mem_get_info, "memory_stats": memory_stats,
        "Stream": Stream, "Event": Event, "current_stream": current_stream, "default_stream": default_stream,
        "stream": stream, "set_stream": _noop,
    }
    for name, value in replacements.items():
        setattr(cuda, name, value)
    # cuda generators: torch.Generator("cuda") gives a PretendCudaGenerator; isinstance checks still hold
    real_generator = torch._C.Generator

    class _GeneratorMeta(type):
        def __instancecheck__(cls, instance):
            return isinstance(instance, real_generator)

        def __call__(cls, device="cpu"):
            if torch.device(device).type == "cuda":
                return PretendCudaGenerator(device)
            return real_generator(device)

    torch.Generator = _GeneratorMeta("Generator", (), {"__doc__": real_generator.__doc__})
