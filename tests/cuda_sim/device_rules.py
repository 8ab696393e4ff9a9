"""Checks of pretend CUDA itself (run in the worker, where it is installed): each rule is True, or a
string saying what happened instead. What CUDA accepts must pass; what CUDA refuses must raise."""
from __future__ import annotations

import copy
import io

import torch

SAME_DEVICE = "Expected all tensors to be on the same device"


def raises(function, fragment: str):
    try:
        function()
    except (RuntimeError, TypeError) as error:
        return True if fragment in str(error) else f"raised another error: {error}"
    return "did not raise"


def passes(function):
    try:
        result = function()
    except Exception as error:  # noqa: BLE001
        return f"raised {type(error).__name__}: {error}"
    return True if result is not False else "returned False"


def check_rules() -> dict:
    cuda = torch.device("cuda", 0)
    x = torch.randn(4, 3, device="cuda")
    cpu = torch.randn(4, 3)
    rules = {}
    rules["factory_on_device"] = x.device == cuda and torch.zeros(2, device="cuda").device == cuda
    rules["tensor_constructor_on_device"] = torch.tensor([1.0, 2.0], device="cuda").device == cuda
    rules["mixing_cuda_and_cpu_raises"] = raises(lambda: x + cpu, SAME_DEVICE)
    rules["matmul_with_cpu_weight_raises"] = raises(lambda: x @ torch.randn(3, 2), SAME_DEVICE)
    rules["cat_across_devices_raises"] = raises(lambda: torch.cat([x, cpu]), SAME_DEVICE)
    rules["zero_dim_cpu_tensor_is_a_scalar"] = passes(lambda: (x * torch.tensor(2.0)).device == cuda)
    rules["copies_cross_devices"] = passes(lambda: x.cpu().device.type == "cpu" and cpu.to("cuda").device == cuda
                                           and torch.equal(cpu.to("cuda").cpu(), cpu))
    rules["copy_into_cuda_from_cpu"] = passes(lambda: torch.equal(torch.empty(4, 3, device="cuda").copy_(cpu).cpu(), cpu))
    rules["cpu_index_tensor_allowed"] = passes(lambda: x[torch.tensor([0, 2])].shape == (2, 3) and x[[1, 3]].device == cuda)
    cpu_generator = torch.Generator().manual_seed(0)
    rules["cpu_generator_for_cuda_raises"] = raises(lambda: torch.randn(3, generator=cpu_generator, device="cuda"),
                                                    "Expected a 'cuda' device type for generator")
    cuda_generator = torch.Generator("cuda").manual_seed(0)
    rules["cuda_generator_for_cpu_raises"] = raises(lambda: torch.randn(3, generator=cuda_generator),
                                                    "Expected a 'cpu' device type for generator")
    rules["cuda_generator_for_cuda"] = passes(lambda: torch.randn(3, generator=cuda_generator, device="cuda").device == cuda)
    rules["numpy_of_cuda_raises"] = raises(lambda: x.numpy(), "can't convert cuda:0 device type tensor to numpy")
    # the device's own RNG: dropout draws from it, and its state restores the same mask
    state = torch.cuda.get_rng_state()
    cpu_state = torch.get_rng_state()
    first = torch.nn.functional.dropout(torch.ones(64, device="cuda"), 0.5)
    rules["dropout_leaves_the_cpu_rng_alone"] = torch.equal(torch.get_rng_state(), cpu_state)
    torch.cuda.set_rng_state(state)
    rules["cuda_rng_state_restores"] = torch.equal(first.cpu(), torch.nn.functional.dropout(torch.ones(64, device="cuda"), 0.5).cpu())
    # modules and parameters move as on a GPU: same parameter objects, autograd, optimizers
    layer = torch.nn.Linear(3, 2)
    weight = layer.weight
    layer.to("cuda")
    rules["module_to_keeps_parameter_identity"] = layer.weight is weight and weight.device == cuda
    rules["parameter_is_still_a_parameter"] = isinstance(layer.weight, torch.nn.Parameter)
    loss = layer(x).square().mean()
    loss.backward()
    rules["gradients_on_the_device"] = layer.weight.grad is not None and layer.weight.grad.device == cuda
    moved = torch.nn.Parameter(torch.randn(2, 2))
    handle = moved
    moved.data = moved.data.to("cuda")
    rules["data_assignment_moves_in_place"] = handle is moved and moved.device == cuda and isinstance(moved, torch.nn.Parameter)
    layer.to(torch.float16)
    rules["dtype_change_on_device"] = layer.weight.dtype == torch.float16 and layer.weight.device == cuda
    layer.float()
    optimizer = torch.optim.AdamW(layer.parameters(), lr=0.1, fused=True)
    scaler = torch.amp.GradScaler("cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        half = layer(x)
    rules["autocast_cuda_casts"] = half.dtype == torch.float16 and half.device == cuda
    optimizer.zero_grad()
    scaler.scale(half.float().square().mean()).backward()
    before = layer.weight.detach().cpu().clone()
    scaler.step(optimizer)
    scaler.update()
    rules["grad_scaler_and_fused_adamw_step"] = not torch.equal(before, layer.weight.detach().cpu())
    clone = copy.deepcopy(layer)
    rules["deepcopy_stays_on_device"] = clone.weight.device == cuda and torch.equal(clone.weight.cpu(), layer.weight.cpu())
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    rules["torch_save_round_trip"] = torch.equal(loaded["weight"], layer.weight.detach().cpu())
    rules["accelerator_picks_cuda"] = _accelerator_device() in ("cuda", "cuda:0")
    rules["memory_statistics_count_device_tensors"] = _memory_grows()
    return rules


def _accelerator_device() -> str:
    from accelerate import PartialState

    return str(PartialState().device)


def _memory_grows() -> bool | str:
    before = torch.cuda.memory_allocated()
    block = torch.empty(1 << 20, dtype=torch.uint8, device="cuda")
    grown = torch.cuda.memory_allocated() - before
    del block
    after = torch.cuda.memory_allocated() - before
    return True if grown >= 1 << 20 and after == 0 else f"grew {grown}, then {after}"
