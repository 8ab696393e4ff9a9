"""Keep other libraries' noise out of the user's terminal, and bitsandbytes out of runs that do not use it.

- bitsandbytes is imported by diffusers (and peft) as soon as it is installed, which costs start-up
  time and, on CPUs with AVX512-BF16, prints "Failed to load CPU gemm_4bit_forward from
  kernels-community ...". Its import is deferred: the module only runs when something uses one of
  its attributes, which in this toolkit is an 8-bit optimizer (library/training/optim/optimizers.py).
- Known-harmless messages (transformers' "requires torchvision (not installed)" notes, the gemm_4bit
  line above) are filtered out by exact text; everything else from these libraries still shows.

Set SDXL_LORA_KIT_VERBOSE=1 to see every library message (and import bitsandbytes eagerly again).
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import os
import sys
import types

VERBOSE_ENV = "SDXL_LORA_KIT_VERBOSE"

# (logger name, text in the message) of messages that never concern the user of this toolkit
KNOWN_NOISE = (
    ("transformers.utils.import_utils", "requires torchvision (not installed)"),
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward"),
)
LAZY_MODULES = ("bitsandbytes",)


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


class _DropText(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


class _DeferredModule(types.ModuleType):
    """A module whose code has not run yet: the first attribute it lacks runs it (in place)."""

    def __getattr__(self, attr):
        state = self.__dict__.pop("_deferred", None)
        if state is None:  # already running or ran: a genuinely missing attribute
            raise AttributeError(f"module {self.__name__!r} has no attribute {attr!r}")
        loader, path = state
        self.__class__ = types.ModuleType
        if path is not None:
            self.__path__ = path
        self.__loader__ = self.__spec__.loader = loader
        loader.exec_module(self)
        return getattr(self, attr)


class _DeferredLoader(importlib.abc.Loader):
    def __init__(self, real):
        self.real = real

    def create_module(self, spec):
        return None  # the default module object; exec_module turns it into a deferred one

    def exec_module(self, module):
        # Hide __path__ so that importing a submodule (real use) runs the package first.
        module.__dict__["_deferred"] = (self.real, module.__dict__.pop("__path__", None))
        module.__class__ = _DeferredModule


class _DeferImport(importlib.abc.MetaPathFinder):
    """`import bitsandbytes` binds a module without running it. importlib.util.LazyLoader is not
    enough: the import system reads `__spec__` at every later `import`, which would run it."""

    def find_spec(self, name, path=None, target=None):
        if name not in LAZY_MODULES:
            return None
        sys.meta_path.remove(self)  # find the real spec with the other finders
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _DeferredLoader(spec.loader)
        return spec


def install() -> None:
    if verbose():
        return
    for logger_name, text in KNOWN_NOISE:
        logger = logging.getLogger(logger_name)
        if not any(isinstance(f, _DropText) and f.text == text for f in logger.filters):
            logger.addFilter(_DropText(text))
    if not any(isinstance(finder, _DeferImport) for finder in sys.meta_path) and not any(m in sys.modules for m in LAZY_MODULES):
        sys.meta_path.insert(0, _DeferImport())
