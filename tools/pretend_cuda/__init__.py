"""Pretend CUDA: run the project's real code as on a machine with GPUs, on a CPU-only torch.

    from tools.pretend_cuda import install
    install()          # before anything imports torch
    ... Accelerator() picks cuda:0; model.to("cuda"); autocast("cuda"); GradScaler("cuda") ...

Tensors report device cuda:N and hold real CPU tensors computed by the real CPU kernels; CUDA's
cross-device and generator rules are enforced (see tensor.py), torch.cuda answers as N GPUs would
(device_api.py), and a small native shim lets the autograd engine accept such tensors (shim.cpp).

What it shows: a tensor or generator on the wrong device, dtype and autocast/GradScaler paths as a
GPU run takes them, RNG streams per device. What it cannot show: kernels (and their numerics),
memory limits, streams and overlap, NCCL, speed. `python tools/pretend_cuda/run.py script.py ...`
runs any script this way.
"""
from __future__ import annotations

import os

_INSTALLED = False


def install(devices: int | None = None) -> None:
    """Make this process a pretend-CUDA machine; call before torch is imported (once)."""
    global _INSTALLED
    if _INSTALLED:
        return
    if devices is not None:
        os.environ["PRETEND_CUDA_DEVICES"] = str(devices)
    count = int(os.environ.get("PRETEND_CUDA_DEVICES", "1"))
    os.environ["PRETEND_CUDA_DEVICES"] = str(count)  # the shim reads it too
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", ",".join(str(i) for i in range(count)))

    from tools.pretend_cuda.native import load_shim

    load_shim()
    import torch

    from tools.pretend_cuda import device_api, tensor

    import torch._dynamo  # noqa: F401  (entering a dispatch mode imports it; its polyfills must see torch's originals)

    device_api.install_device_api(count)
    _patch_conversions(torch, tensor.CudaTensor)
    # for the whole process (the main thread; autograd's device threads inherit them)
    tensor.PretendCudaFunctionMode().__enter__()
    tensor.PretendCudaMode().__enter__()
    _INSTALLED = True


def installed() -> bool:
    return _INSTALLED


def _patch_conversions(torch, cuda_tensor) -> None:
    """Module.to() between CPU and pretend cuda: never the in-place `.data =` path (it would copy the
    C++ metadata but not the Python-held data); swapping keeps the parameter's identity instead."""
    compatible = torch._has_compatible_shallow_copy_type

    def has_compatible_shallow_copy_type(input, from_):  # noqa: A002  (torch's parameter names)
        if isinstance(input, cuda_tensor) != isinstance(from_, cuda_tensor):
            return False
        return compatible(input, from_)

    torch._has_compatible_shallow_copy_type = has_compatible_shallow_copy_type
    from tools.pretend_cuda.tensor import device_aware_constructor, install_data_property

    install_data_property()

    for name in ("tensor", "as_tensor", "asarray"):
        setattr(torch, name, device_aware_constructor(getattr(torch, name)))
