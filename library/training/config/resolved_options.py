"""The resolved options of a run: read-only once resolution is done.

Every value is decided while the config is resolved (library/training/config/config_loader.py):
file, command line, aliases, kohya's implied settings. After that nothing may write to it, so no
part of a run depends on another having changed an option first; what a run derives later (its
seed when none was given, the epoch cadence of save_n_epoch_ratio, the checkpointing policy the
memory check chose) lives with the trainer. `replace` gives a changed copy where a caller needs
one (a what-if estimate, a test).
"""
from __future__ import annotations

import argparse
import weakref

_FROZEN: "weakref.WeakSet[ResolvedOptions]" = weakref.WeakSet()  # not in __dict__: vars() stays the options


class ResolvedOptions(argparse.Namespace):
    def __setattr__(self, name: str, value) -> None:
        if self in _FROZEN:
            raise AttributeError(f"the resolved config is read-only: {name} cannot change after resolution "
                                 "(derive the value where it is needed, or use .replace() for a changed copy)")
        super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        if self in _FROZEN:
            raise AttributeError(f"the resolved config is read-only: {name} cannot be removed")
        super().__delattr__(name)

    def __hash__(self) -> int:  # identity: kept in a WeakSet (Namespace defines __eq__, which drops hashing)
        return id(self)

    def freeze(self) -> "ResolvedOptions":
        _FROZEN.add(self)
        return self

    def replace(self, **changes) -> "ResolvedOptions":
        """A read-only copy with `changes` applied."""
        return ResolvedOptions(**{**vars(self), **changes}).freeze()
