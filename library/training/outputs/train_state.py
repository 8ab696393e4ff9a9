"""Resumable training states: what is saved, where, and how a resume finds the newest complete one.

A state is a folder `<output_name>-<epoch:06d>-state`, `<output_name>-step<step:08d>-state` or
`<output_name>-state` holding the network weights, optimizer, scheduler, grad-scaler and RNG states
and `train_state.json` (counters and loss history). It is written into a hidden temporary folder and
renamed into place, so a process killed mid-save leaves the previous states untouched and never a
half state that looks complete.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from library.errors import UserError
from library.file_io import apply_umask, atomic_folder
from library.models.checkpoint_file import load_weights
from library.training.parallel.distributed import restore_rng_state
from library.training.outputs.state_checks import DamagedState, check_network_shapes, check_optimizer, optimizer_name, progress_fields

STATE_FILE = "train_state.json"
FORMAT_VERSION = 1


@dataclass
class Progress:
    global_step: int = 0
    epoch: int = 1  # the epoch in progress (1-based)
    batches_done_in_epoch: int = 0
    recent_losses: list = field(default_factory=list)
    epoch_losses: list = field(default_factory=list)
    seed: int = 0


def state_folder_name(output_name: str, epoch: int | None = None, step: int | None = None) -> str:
    if epoch is not None:
        return f"{output_name}-{epoch:06d}-state"
    if step is not None:
        return f"{output_name}-step{step:08d}-state"
    return f"{output_name}-state"


def save_state(folder: Path, progress: Progress, network, optimizer, lr_scheduler, scaler=None, extra: dict | None = None,
               rng_states: list[dict] | None = None) -> Path:
    """`rng_states`: every process's random state in rank order (distributed.gathered_rng_states);
    this process's CPU state when not given."""
    folder = Path(folder)
    rng_states = rng_states or [{"torch": torch.get_rng_state()}]
    # atomic_folder: written beside the target and swapped in whole; a full disk is a WriteFailed naming the folder
    with atomic_folder(folder) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}, str(tmp / "network.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(lr_scheduler.state_dict(), tmp / "scheduler.pt")
        # "torch" (process 0's CPU state) is what states before per-process RNG held; "processes" has them all
        torch.save({"torch": rng_states[0]["torch"], "processes": rng_states, "scaler": scaler.state_dict() if scaler else None,
                    "extra": extra or {}}, tmp / "rng_and_extra.pt")
        (tmp / STATE_FILE).write_text(json.dumps({"format": FORMAT_VERSION, "complete": True, "optimizer": optimizer_name(optimizer),
                                                  **asdict(progress)}, indent=1))
        for file in tmp.iterdir():
            apply_umask(file)
    return folder


def read_progress(folder: Path) -> Progress | None:
    """The progress of a complete state folder, or None when it is not one; DamagedState (naming the
    field) when train_state.json holds values no run writes."""
    path = Path(folder) / STATE_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    needed = ("network.safetensors", "optimizer.pt", "scheduler.pt", "rng_and_extra.pt")
    if not isinstance(data, dict) or not data.get("complete") or not all((Path(folder) / n).exists() for n in needed):
        return None
    return Progress(**progress_fields(data, path))


def _recorded_optimizer(folder: Path) -> str | None:
    """The optimizer class a state was saved by (None for states saved before it was recorded)."""
    return json.loads((Path(folder) / STATE_FILE).read_text()).get("optimizer")


def _readable(folder: Path) -> bool:
    try:
        return read_progress(folder) is not None
    except DamagedState:
        return False


def find_state(resume: str | Path) -> Path:
    """`resume` is a state folder, or an output folder whose newest complete state is taken."""
    path = Path(resume)
    if not path.exists():
        raise UserError(f"{path}: resume folder not found")
    if (path / STATE_FILE).exists():
        if read_progress(path) is None:
            raise UserError(f"{path}: this state is incomplete (the save was interrupted); resume from the output folder to use the newest complete state")
        return path
    candidates = [(p, read_progress(p)) for p in path.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name.endswith("-state")]
    complete = [(p, progress) for p, progress in candidates if progress is not None]
    if not complete:
        raise UserError(f"{path}: no complete training state (<name>-...-state folder) to resume from; train with save_state = true")
    return max(complete, key=lambda pair: pair[1].global_step)[0]


def _damaged(folder: Path, name: str, error: Exception) -> UserError:
    first = (str(error).strip().splitlines() or [type(error).__name__])[0].split(". ")[0][:200]  # torch adds paragraphs
    others = sorted(p.name for p in Path(folder).parent.glob("*-state") if p != Path(folder) and _readable(p))
    hint = f"resume from an older state ({', '.join(others[-3:])}) or " if others else ""
    return UserError(f"{Path(folder) / name}: damaged or truncated ({first}); this state cannot be resumed: "
                     f"{hint}delete {Path(folder).name} and start again")


def _read(folder: Path, name: str, loader):
    try:
        return loader(Path(folder) / name)
    except UserError as error:
        raise _damaged(folder, name, error) from None
    except Exception as error:  # torch, safetensors and pickle each raise their own types for a cut file
        raise _damaged(folder, name, error) from None


def load_state(folder: Path, network, optimizer, lr_scheduler, scaler=None, rank: int = 0, device=None,
               notices: list | None = None) -> tuple[Progress, dict]:
    """Load a state into the run's objects; `rank` and `device` pick this process's RNG states."""
    progress = read_progress(folder)
    if progress is None:
        raise UserError(f"{folder}: incomplete training state")
    weights = _read(folder, "network.safetensors", lambda path: load_weights(path))
    check_network_shapes(folder, weights, network)  # names and shapes (the rank) first: one line, not torch's traceback
    network.load_state_dict(weights, strict=True)
    optimizer_state = _read(folder, "optimizer.pt", lambda path: torch.load(path, weights_only=True))
    check_optimizer(folder, _recorded_optimizer(folder), optimizer_state, optimizer)
    scheduler_state = _read(folder, "scheduler.pt", lambda path: torch.load(path, weights_only=True))
    rng = _read(folder, "rng_and_extra.pt", lambda path: torch.load(path, weights_only=True))
    optimizer.load_state_dict(optimizer_state)
    lr_scheduler.load_state_dict(scheduler_state)
    restore_rng_state(rng, rank, torch.device(device or "cpu"), notices if notices is not None else [])
    if scaler is not None and rng.get("scaler"):
        scaler.load_state_dict(rng["scaler"])
    return progress, rng.get("extra", {})


def prune_states(output_dir: Path, output_name: str, keep_epochs: int | None, keep_steps: int | None,
                 current_epoch: int | None, current_step: int | None, every_epochs: int | None) -> None:
    """save_last_n_epochs_state / save_last_n_steps_state."""
    if keep_epochs and current_epoch is not None and every_epochs:
        old = current_epoch - every_epochs * keep_epochs
        if old > 0:
            shutil.rmtree(Path(output_dir) / state_folder_name(output_name, epoch=old), ignore_errors=True)
    if keep_steps and current_step is not None:
        prefix = f"{output_name}-step"
        for folder in Path(output_dir).glob(f"{prefix}*-state"):
            digits = folder.name[len(prefix):-len("-state")]
            if digits.isdigit() and int(digits) < current_step - keep_steps:
                shutil.rmtree(folder, ignore_errors=True)
