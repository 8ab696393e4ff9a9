"""Builds and loads the native half of pretend CUDA (shim.cpp), before torch is imported.

The shim is compiled with g++ against the installed torch's headers and libraries, once per torch
build and shim source (cached under ~/.cache/sdxl-lora-kit/pretend_cuda, or PRETEND_CUDA_CACHE),
and loaded with RTLD_GLOBAL so its static registrations land in the same c10/ATen registries
torch uses. It must be loaded before `import torch`: ATen looks its CUDA hooks up once, on first use.
"""
from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

SHIM_SOURCE = Path(__file__).with_name("shim.cpp")


class ShimBuildFailed(RuntimeError):
    pass


def torch_folder() -> Path:
    """The installed torch package folder, found without importing torch."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.origin:
        raise ShimBuildFailed("pretend CUDA: torch is not installed")
    return Path(spec.origin).parent


def cache_folder() -> Path:
    base = os.environ.get("PRETEND_CUDA_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "sdxl-lora-kit", "pretend_cuda")
    return Path(base)


def shim_path() -> Path:
    """Where the shim for this torch build and this source lives (the name changes when either does)."""
    torch_dir = torch_folder()
    identity = hashlib.sha256()
    identity.update(SHIM_SOURCE.read_bytes())
    for library in ("libc10.so", "libtorch_cpu.so"):
        stat = (torch_dir / "lib" / library).stat()
        identity.update(f"{library}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    identity.update(sys.version.encode())
    return cache_folder() / f"pretend_cuda_{identity.hexdigest()[:16]}.so"


def build_shim() -> Path:
    """Compile shim.cpp unless a build for this torch is cached; returns the .so path."""
    target = shim_path()
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    torch_dir = torch_folder()
    temporary = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    command = [
        os.environ.get("CXX", "g++"), "-shared", "-fPIC", "-O1", "-std=c++20", "-w",
        f"-I{torch_dir / 'include'}", f"-I{sysconfig.get_paths()['include']}",
        str(SHIM_SOURCE), "-o", str(temporary),
        f"-L{torch_dir / 'lib'}", "-Wl,--no-as-needed", "-lc10", "-ltorch_cpu", f"-Wl,-rpath,{torch_dir / 'lib'}",
    ]
    # The ABI flag must match torch's (torch >= 2.7 wheels use the C++11 ABI; older ones say so in a header).
    abi = _torch_cxx11_abi(torch_dir)
    if abi is not None:
        command.insert(1, f"-D_GLIBCXX_USE_CXX11_ABI={abi}")
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except FileNotFoundError as error:
        raise ShimBuildFailed(f"pretend CUDA needs a C++ compiler (g++): {error}") from error
    if result.returncode != 0:
        temporary.unlink(missing_ok=True)
        raise ShimBuildFailed(f"pretend CUDA: compiling {SHIM_SOURCE.name} failed:\n{result.stderr[-4000:]}")
    os.replace(temporary, target)  # several processes may build at once: the last rename wins, each complete
    return target


def _torch_cxx11_abi(torch_dir: Path) -> int | None:
    """An explicit _GLIBCXX_USE_CXX11_ABI (PRETEND_CUDA_CXX11_ABI=0/1), else the compiler's default,
    which matches torch's own wheels since 2.7 (the value itself is only readable after import)."""
    del torch_dir
    value = os.environ.get("PRETEND_CUDA_CXX11_ABI")
    return int(value) if value in ("0", "1") else None


def load_shim() -> None:
    """Build (if needed) and load the shim; must run before torch is imported."""
    if "torch" in sys.modules:
        raise ShimBuildFailed("pretend CUDA must be installed before torch is imported (ATen caches its CUDA hooks on first use)")
    ctypes.CDLL(str(build_shim()), mode=ctypes.RTLD_GLOBAL)
