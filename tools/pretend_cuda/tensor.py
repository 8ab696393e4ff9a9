"""Pretend CUDA tensors: `.device` says cuda:N, the data is a real CPU tensor, CUDA's rules hold.

`CudaTensor` is a wrapper subclass (`_make_wrapper_subclass`) holding its data in `elem`, a plain
CPU tensor; every aten op on it (and every factory asked for a cuda device, through
`PretendCudaMode`) is unwrapped, checked, run by the real CPU kernel and wrapped again. So dtypes,
autograd, autocast('cuda') and GradScaler('cuda') are the real ones, and losses are real numbers.

The rules a real GPU enforces and a CPU run never sees, enforced here:
- an op mixing a cuda tensor with a CPU tensor raises CUDA's "Expected all tensors to be on the
  same device" error, except for 0-dim CPU tensors (CUDA treats them as scalars), copies and
  `.to()` (which cross devices by design) and index tensors of indexing ops;
- a CPU generator used for cuda tensors raises (and a cuda generator for CPU tensors);
- `.numpy()` of a cuda tensor raises (torch's own check);
- random ops on cuda tensors draw from the device's own generator (torch.cuda.get_rng_state),
  not from the CPU's, so a resume that restores only the CPU RNG is not exact here either.
"""
from __future__ import annotations

import copy
import threading
import weakref

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

aten = torch.ops.aten

# Ops that take tensors on different devices by design.
CROSS_DEVICE_OPS = {
    aten._to_copy.default, aten.copy_.default, aten._copy_from.default, aten._copy_from_and_resize.default,
    aten.set_.source_Tensor, aten.lift_fresh.default, aten.lift_fresh_copy.default,
}
# Indexing ops: CUDA moves CPU index tensors to the device itself.
INDEX_OPS = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}


class CudaTensor(torch.Tensor):
    """A tensor on a pretend CUDA device; `elem` holds its data on the CPU."""

    elem: torch.Tensor
    __torch_function__ = torch._C._disabled_torch_function_impl  # outputs come from dispatch, already wrapped

    @staticmethod
    def __new__(cls, elem: torch.Tensor, device: torch.device):
        if isinstance(elem, CudaTensor) or elem.device.type != "cpu":
            raise AssertionError(f"pretend CUDA wraps CPU tensors only, not {type(elem).__name__} on {elem.device}")
        wrapper = torch.Tensor._make_wrapper_subclass(
            cls, elem.shape, strides=elem.stride(), storage_offset=elem.storage_offset(), dtype=elem.dtype,
            layout=elem.layout, device=device, requires_grad=False,
        )
        wrapper.elem = elem
        MEMORY.track(wrapper, elem)
        return wrapper

    def __repr__(self, *, tensor_contents=None):
        grad = f", grad_fn=<{type(self.grad_fn).__name__}>" if self.grad_fn is not None else ""
        return f"{repr(self.elem)[:-1]}, device='{self.device}'{grad})"

    # -- what torch reads off the storage (identity, pickling, copies) ----------------------------
    def data_ptr(self) -> int:
        return self.elem.data_ptr()

    def untyped_storage(self):
        return self.elem.untyped_storage()

    def numpy(self, *, force: bool = False):
        if force:
            return self.elem.detach().numpy()
        raise TypeError(f"can't convert {self.device} device type tensor to numpy. Use Tensor.cpu() to copy the tensor to host memory first.")

    def new_tensor(self, data, dtype=None, device=None, requires_grad=False, layout=None, pin_memory=False):
        return torch.tensor(data, dtype=dtype or self.dtype, device=device or self.device, requires_grad=requires_grad)

    def tolist(self):
        return self.elem.tolist()

    def __reduce_ex__(self, protocol):
        # Pickled as its CPU data: states written here load as if torch.load(map_location="cpu").
        return self.elem.detach().clone().requires_grad_(self.requires_grad).__reduce_ex__(protocol)

    def __deepcopy__(self, memo):
        if id(self) in memo:
            return memo[id(self)]
        clone = CudaTensor(copy.deepcopy(self.elem, memo), self.device).requires_grad_(self.requires_grad)
        if getattr(self, "_is_param", False):
            clone._is_param = True
        if self.grad is not None:
            clone.grad = copy.deepcopy(self.grad, memo)
        memo[id(self)] = clone
        return clone

    # Module.to(): converting into a CudaTensor swaps the parameter in place (keeps its identity,
    # as set_data does on a real GPU); these two make torch treat the class as swappable.
    def __tensor_flatten__(self):
        return ["elem"], self.device

    @staticmethod
    def __tensor_unflatten__(inner, device, outer_size, outer_stride):
        return CudaTensor(inner["elem"], device)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return run_op(func, args, kwargs or {})


class PretendCudaGenerator(torch._C.Generator):
    """A generator on a pretend CUDA device: a real CPU generator that reports device cuda:N."""

    def __new__(cls, device="cuda"):
        generator = super().__new__(cls)  # a CPU generator: the CPU kernels accept it
        device = torch.device(device)
        generator._pretend_device = torch.device("cuda", device.index if device.index is not None else current_device())
        return generator

    def __init__(self, device="cuda"):
        super().__init__()

    @property
    def device(self):
        return self._pretend_device


def current_device() -> int:
    from tools.pretend_cuda import device_api

    return device_api.STATE.current


def default_generator(device: torch.device) -> PretendCudaGenerator:
    from tools.pretend_cuda import device_api

    return device_api.STATE.generators[device.index if device.index is not None else device_api.STATE.current]


class _DeviceMemory:
    """Bytes held by live cuda tensors (storages counted once), for torch.cuda.memory_allocated."""

    def __init__(self):
        self.storages: dict[int, list[int]] = {}  # data pointer -> [bytes, wrappers alive]
        self.allocated = 0
        self.peak = 0

    def track(self, wrapper, elem) -> None:
        storage = elem.untyped_storage()
        pointer = storage.data_ptr()
        if pointer == 0:
            return
        entry = self.storages.get(pointer)
        if entry is None:
            entry = self.storages[pointer] = [storage.nbytes(), 0]
            self.allocated += entry[0]
            self.peak = max(self.peak, self.allocated)
        entry[1] += 1
        weakref.finalize(elem, self._release, pointer)  # not on the wrapper: a weakref stops Module.to() swapping it

    def _release(self, pointer: int) -> None:
        entry = self.storages.get(pointer)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del self.storages[pointer]
            self.allocated -= entry[0]


MEMORY = _DeviceMemory()


class _Stats:
    """How many ops ran on a pretend device (a test's proof that the work happened "on the GPU")."""

    def __init__(self):
        self.cuda_ops = 0

    def reset(self) -> None:
        self.cuda_ops = 0


STATS = _Stats()


def _device_of(value) -> torch.device | None:
    return value if value is None else torch.device(value)


def _check_devices(func, flat, kwargs) -> None:
    """CUDA's same-device rule for one op call."""
    if func in CROSS_DEVICE_OPS or kwargs.get("device") is not None:
        return
    devices = []
    for value in flat:
        if isinstance(value, CudaTensor):
            devices.append(value.device)
        elif isinstance(value, torch.Tensor) and value.device.type == "cpu" and value.dim() > 0:
            devices.append(value.device)
    if func in INDEX_OPS:  # only `self` (and the values written) must be on the device
        devices = [d for d in devices if d.type == "cuda"] or devices
    unique = list(dict.fromkeys(devices))
    if len(unique) > 1 and any(d.type == "cuda" for d in unique):
        first, second = sorted(unique, key=lambda d: d.type != "cuda")[:2]
        raise RuntimeError(f"Expected all tensors to be on the same device, but found at least two devices, {first} and {second}! "
                           f"(pretend CUDA, in {func})")


def _target_device(flat, kwargs) -> torch.device | None:
    explicit = _device_of(kwargs.get("device"))
    if explicit is not None:
        return explicit
    for value in flat:
        if isinstance(value, CudaTensor):
            return value.device
    return None


_GENERATOR_CALL = threading.local()  # the device type of the generator the current torch call was given


def _check_generators(func, flat, target: torch.device | None) -> bool:
    """CUDA's generator rule; True when the call brings its own generator. The dispatcher hands ops a
    fresh Python object for a generator, so which device it belongs to is recorded by
    PretendCudaFunctionMode, which sees the caller's object, just before the call."""
    given = False
    for value in flat:
        if isinstance(value, torch._C.Generator):
            given = True
            kind = getattr(_GENERATOR_CALL, "device_type", None) or "cpu"
            wanted = target.type if target is not None else "cpu"
            if kind != wanted:
                raise RuntimeError(f"Expected a '{wanted}' device type for generator but found '{kind}' (pretend CUDA, in {func})")
    return given


def _unwrap(value):
    return value.elem if isinstance(value, CudaTensor) else value


def _written_argument(func, args, kwargs, alias):
    for position, argument in enumerate(func._schema.arguments):
        info = argument.alias_info
        if info is not None and info.is_write and info.before_set == alias.before_set:
            return args[position] if position < len(args) else kwargs.get(argument.name)
    return None


def _wrap_outputs(func, result, args, kwargs, target: torch.device | None):
    def wrap(value):
        if target is not None and target.type == "cuda" and isinstance(value, torch.Tensor) and value.device.type == "cpu":
            return CudaTensor(value, target)
        return value

    returns = func._schema.returns
    if len(returns) == 1:  # one Tensor, or one Tensor[] (a list)
        alias = returns[0].alias_info
        if alias is not None and alias.is_write:
            written = _written_argument(func, args, kwargs, alias)
            if written is not None:
                return written
        return tree_map(wrap, result)
    if isinstance(result, tuple) and len(result) == len(returns):
        outputs = []
        for value, declared in zip(result, returns):
            alias = declared.alias_info
            written = _written_argument(func, args, kwargs, alias) if alias is not None and alias.is_write else None
            outputs.append(written if written is not None else tree_map(wrap, value))
        return tuple(outputs)
    return tree_map(wrap, result)


def _run_with_device_generator(func, args, kwargs, target: torch.device):
    """A random op on the device without a generator: draw from the device's generator."""
    generator = default_generator(target)
    if any(argument.name == "generator" for argument in func._schema.arguments):
        return func(*args, **{**kwargs, "generator": generator})
    # No generator argument (e.g. native_dropout): run on the CPU default generator holding the device's state.
    saved = torch.default_generator.get_state()
    torch.default_generator.set_state(generator.get_state())
    try:
        return func(*args, **kwargs)
    finally:
        generator.set_state(torch.default_generator.get_state())
        torch.default_generator.set_state(saved)


def run_op(func, args, kwargs):
    """One aten call with pretend CUDA semantics."""
    if func is aten.is_pinned.default:
        return False
    if func is aten._pin_memory.default:  # pinned host memory is host memory
        return _unwrap(args[0]).clone()
    flat, _ = tree_flatten((args, kwargs))
    requested = _device_of(kwargs.get("device"))
    if not any(isinstance(v, CudaTensor) for v in flat) and (requested is None or requested.type != "cuda"):
        _check_generators(func, flat, requested)  # a CPU op: a cuda generator is the mistake here
        return func(*args, **kwargs)
    _check_devices(func, flat, kwargs)
    target = _target_device(flat, kwargs)
    own_generator = _check_generators(func, flat, target)
    if target is not None and target.type == "cuda" and target.index is not None and target.index >= len(default_generators()):
        raise RuntimeError(f"CUDA error: invalid device ordinal {target} (pretend CUDA has {len(default_generators())} device(s))")
    if target is not None and target.type == "cuda":
        STATS.cuda_ops += 1
    cpu_args = tree_map(_unwrap, args)
    cpu_kwargs = tree_map(_unwrap, kwargs)
    if cpu_kwargs.get("device") is not None and torch.device(cpu_kwargs["device"]).type == "cuda":
        cpu_kwargs["device"] = torch.device("cpu")
        if target.index is None:
            target = torch.device("cuda", current_device())
    if cpu_kwargs.get("pin_memory"):
        cpu_kwargs["pin_memory"] = False
    if target is not None and target.type == "cuda" and not own_generator and torch.Tag.nondeterministic_seeded in func.tags:
        result = _run_with_device_generator(func, cpu_args, cpu_kwargs, target)
    else:
        result = func(*cpu_args, **cpu_kwargs)
    return _wrap_outputs(func, result, args, kwargs, target)


def default_generators():
    from tools.pretend_cuda import device_api

    return device_api.STATE.generators


class PretendCudaMode(TorchDispatchMode):
    """Catches factories asked for a cuda device (torch.zeros(..., device="cuda")) and every op on
    pretend cuda tensors, in the threads it is active in (autograd's device threads inherit it)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return run_op(func, args, kwargs or {})


_INDEXING = {torch.Tensor.__getitem__, torch.Tensor.__setitem__}


def _index_lists_as_tensors(index):
    """`t[[0, 2]]`: torch turns the list into an index tensor on t's device with the dispatch mode off
    (so it would reach the absent CUDA kernels); a CPU index tensor is what CUDA accepts too."""
    if isinstance(index, list):
        return torch.tensor(index) if all(isinstance(i, (int, bool)) for i in index) else index
    if isinstance(index, tuple):
        return tuple(_index_lists_as_tensors(part) for part in index)
    return index


class PretendCudaFunctionMode(TorchFunctionMode):
    """Records the device of a generator passed to a torch call (`generator=`), for the dispatch-level check."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _INDEXING and len(args) > 1 and isinstance(args[0], CudaTensor):
            args = (args[0], _index_lists_as_tensors(args[1]), *args[2:])
        generator = kwargs.get("generator")
        if generator is None:
            return func(*args, **kwargs)
        previous = getattr(_GENERATOR_CALL, "device_type", None)
        _GENERATOR_CALL.device_type = generator.device.type
        try:
            return func(*args, **kwargs)
        finally:
            _GENERATOR_CALL.device_type = previous


def device_aware_constructor(original):
    """torch.tensor / as_tensor / asarray build their tensor with the dispatch mode switched off, so a
    cuda device would reach the (absent) CUDA kernels: build on the CPU, then move it like `.to()`."""

    def build(*args, device=None, **kwargs):
        if device is not None and torch.device(device).type == "cuda":
            requires_grad = kwargs.pop("requires_grad", False)
            built = original(*args, device="cpu", **kwargs).to(device)
            return built.requires_grad_(requires_grad) if requires_grad else built
        return original(*args, device=device, **kwargs)

    build.__wrapped__ = original
    build.__name__ = getattr(original, "__name__", "build")
    build.__doc__ = getattr(original, "__doc__", None)
    return build


_NATIVE_DATA = torch._C.TensorBase.data


def _get_data(tensor):
    return _NATIVE_DATA.__get__(tensor)


def _set_data(tensor, new):
    """`tensor.data = new` (e.g. `param.data = param.data.to("cuda")`, a parameter moved in place).
    Natively it copies the C++ metadata only, which would leave a cuda tensor without its CPU data:
    between CPU and pretend cuda the tensor is swapped in place instead (same Python object, as
    set_data keeps it), and within pretend cuda the held data follows the metadata."""
    if isinstance(tensor, CudaTensor) == isinstance(new, CudaTensor):
        _NATIVE_DATA.__set__(tensor, new)
        if isinstance(tensor, CudaTensor):
            tensor.elem = new.elem
        return
    grad = tensor.grad
    if grad is not None:
        tensor.grad = None
    if isinstance(tensor, torch.nn.Parameter):
        replacement = torch.nn.Parameter(new.detach(), requires_grad=tensor.requires_grad)
    else:
        replacement = new.detach().requires_grad_(tensor.requires_grad)
    torch.utils.swap_tensors(tensor, replacement)
    if grad is not None and grad.device == tensor.device and grad.dtype == tensor.dtype:
        tensor.grad = grad


def install_data_property() -> None:
    torch.Tensor.data = property(_get_data, _set_data, doc=_NATIVE_DATA.__doc__)
