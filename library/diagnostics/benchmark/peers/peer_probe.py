"""Runs a training script as `python script.py ARGS` would, and writes when its phases happened.

    python library/diagnostics/benchmark/peers/peer_probe.py EVENTS_JSON SCRIPT [ARGS ...]

Used by the benchmark's `peer` section for both trainers alike (diffusers' SDXL LoRA script under
its own interpreter, and our sdxl_train_network.py), so the same events come from the same code:

  text / vae / unet  first start and last end of the forward calls of the CLIP text models, the
                     VAE encoder and the UNet (global module hooks, removed at the first
                     optimizer step so the steps themselves run unhooked)
  steps              wall-clock time at the end of every optimizer step (a global step hook)

Nothing is imported before the script imports it: the hooks are registered the moment torch
finishes importing (an import finder wraps torch's loader), so start-up is the script's own.
Standard library only (the script's interpreter may be a different environment).
"""
from __future__ import annotations

import atexit
import importlib.abc
import importlib.util
import json
import os
import runpy
import sys
import time

# module class name -> event group
WATCHED = {"CLIPTextModel": "text", "CLIPTextModelWithProjection": "text", "CLIPTextTransformer": "text",
           "Encoder": "vae", "UNet2DConditionModel": "unet"}

events: dict = {"probe_start": time.time(), "windows": {}, "steps": []}
_handles: list = []


def _mark(group: str, key: str) -> None:
    window = events["windows"].setdefault(group, {"first_start": None, "last_end": None, "calls": 0})
    now = time.time()
    if key == "start":
        window["calls"] += 1
        if window["first_start"] is None:
            window["first_start"] = now
    else:
        window["last_end"] = now


def _on_meta(args) -> bool:
    """A call on meta tensors computes nothing (our memory pre-flight's shape-only pass): not a phase."""
    device = getattr(args[0], "device", None) if args else None
    return getattr(device, "type", None) == "meta"


def _pre_hook(module, args):
    group = WATCHED.get(type(module).__name__)
    if group and not _on_meta(args):
        _mark(group, "start")


def _post_hook(module, args, output):
    group = WATCHED.get(type(module).__name__)
    if group and not _on_meta(args):
        _mark(group, "end")


def _step_hook(optimizer, args, kwargs):
    events["steps"].append(time.time())
    while _handles:  # the set-up phases are over: no per-module hook during training
        _handles.pop().remove()


def _install(torch) -> None:
    from torch.nn.modules import module as module_hooks
    from torch.optim import optimizer as optimizer_hooks

    _handles.append(module_hooks.register_module_forward_pre_hook(_pre_hook))
    _handles.append(module_hooks.register_module_forward_hook(_post_hook))
    optimizer_hooks.register_optimizer_step_post_hook(_step_hook)
    events["torch_imported"] = time.time()


class _TorchWatcher(importlib.abc.MetaPathFinder):
    """Finds `torch` through the other finders and installs the hooks once its module has run."""

    def find_spec(self, name, path=None, target=None):
        if name != "torch":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            _install(module)

        spec.loader.exec_module = exec_module
        return spec


def _write(path: str) -> None:
    events["exit"] = time.time()
    temporary = f"{path}.tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(events, handle)
    os.replace(temporary, path)


def main(argv: list[str]) -> None:
    events_path, script, *args = argv
    atexit.register(_write, events_path)
    sys.meta_path.insert(0, _TorchWatcher())
    script = os.path.abspath(script)
    sys.argv = [script, *args]
    sys.path[0] = os.path.dirname(script)  # as `python script.py` would have it (not this file's folder)
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
