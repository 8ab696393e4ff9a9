"""Before any model loads: can this run write its results, and without destroying anything?

  - output_name (and log_prefix) are plain names, so every output stays inside output_dir;
  - nothing the run may write or delete in output_dir (LoRA files, states, embeddings, samples) is
    one of its inputs (base model, VAE, network_weights, tokenizers, configs, dataset files and
    caches): a LoRA saved over the base model would silently destroy it;
  - output_dir (and logging_dir when logging) exist or are created, and a probe file is written,
    so a read-only mount or a folder under a file fails now and not after hours of training;
  - the output_dir lock is taken (one run per folder) and leftovers of killed saves are removed.
After the network exists, `check_free_space` compares the free space with what the saves will
take (LoRA size x kept saves + training states).
"""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path
from typing import Iterator

from library.data.captions import caption_path
from library.data.caching.latent_cache import latent_cache_path
from library.data.caching.text_encoder_cache import te_cache_path
from library.errors import UserError
from library.file_io import describe_size, free_bytes, remove_stale_temporaries, write_failure
from library.training.outputs.output_lock import OutputLock

_MODEL_INPUTS = ("pretrained_model_name_or_path", "vae", "network_weights", "tokenizer_cache_dir", "config_file",
                 "dataset_config", "sample_prompts", "in_json", "metadata_thumbnail")


def is_main_process() -> bool:
    """accelerate/torchrun tell each process its rank through the environment before any
    Accelerator exists; only rank 0 writes (and locks) the output folder."""
    return int(os.environ.get("RANK", "0") or 0) == 0


# -- names ----------------------------------------------------------------------------------------
def check_plain_name(value: str | None, option: str, where: str) -> None:
    """A file-name part that must not lead out of its folder (no separators, no '..')."""
    if value is None:
        return
    if (not value.strip() or value in (".", "..") or "/" in value or "\\" in value or "\0" in value
            or os.path.isabs(value)):
        raise UserError(f"{where}: {option} = {value!r} must be a plain name without folders (outputs are written inside "
                        f"output_dir); put the folder into output_dir instead")


# -- collisions between outputs and inputs ----------------------------------------------------------
class _Identities:
    """The directory entry a path names (real parent folder + name) and, for a symlink, the file it
    finally resolves to: replacing either would change what the path reads. Parent folders are
    resolved once each (a dataset has thousands of files in a few folders)."""

    def __init__(self):
        self._folders: dict[str, str] = {}

    def __call__(self, path) -> set[str]:
        path = os.path.abspath(path)
        folder = os.path.dirname(path)
        if folder not in self._folders:
            self._folders[folder] = os.path.realpath(folder)
        entry = os.path.join(self._folders[folder], os.path.basename(path))
        return {entry, os.path.realpath(entry)} if os.path.islink(entry) else {entry}


def input_files(args, items, identity: _Identities) -> dict[str, tuple[Path, str]]:
    """{identity: (path, what it is)} of every existing input file of the run."""
    found: dict[str, tuple[Path, str]] = {}

    def add(path, what: str) -> None:
        path = Path(path)
        if path.is_dir():
            for child in path.rglob("*"):
                if child.is_file():
                    add(child, what)
        elif path.exists():
            for key in identity(path):
                found.setdefault(key, (path, what))

    for name in _MODEL_INPUTS:
        value = getattr(args, name, None)
        if value:
            add(value, name)
    for item in items:
        add(item.image_path, "training image")
        for extra in (caption_path(item.image_path, item.subset.caption_extension),
                      latent_cache_path(item.image_path, item.placement.original_size), te_cache_path(item.image_path)):
            add(extra, "dataset file")
        if item.subset.metadata_file:
            add(item.subset.metadata_file, "metadata file")
    return found


def _output_patterns(output_name: str) -> list[re.Pattern]:
    """Names this run may create, replace or delete in output_dir (see saving.py, train_state.py, pivotal.py)."""
    name = re.escape(output_name)
    numbered = r"(-\d{6}|-step\d{8})?"
    return [re.compile(rf"^{name}{numbered}\.safetensors$"), re.compile(rf"^{name}{numbered}_emb\.safetensors$"),
            re.compile(rf"^{name}{numbered}-state$")]


def existing_outputs(output_dir: Path, output_name: str) -> list[Path]:
    """Paths that exist now and that this run may overwrite or delete."""
    found = []
    patterns = _output_patterns(output_name)
    if output_dir.is_dir():
        found += [p for p in output_dir.iterdir() if any(pattern.match(p.name) for pattern in patterns)]
    samples = output_dir / "sample"
    if samples.is_dir():
        found += [p for p in samples.iterdir() if p.name.startswith(f"{output_name}_") and p.suffix == ".png"]
    return found


def check_collisions(args, items) -> None:
    output_dir = Path(args.output_dir)
    candidates = existing_outputs(output_dir, args.output_name)
    if not candidates:
        return
    identity = _Identities()
    inputs = input_files(args, items, identity)
    for candidate in candidates:
        hits = [inputs[i] for i in identity(candidate) if i in inputs]
        if hits:
            path, what = hits[0]
            raise UserError(f"output_name {args.output_name!r} in output_dir {output_dir} would overwrite {candidate}, "
                            f"an input of this run ({what}); choose another output_name or output_dir")
        if candidate.is_dir():
            real = os.path.realpath(candidate) + os.sep
            inside = [value for identity, value in inputs.items() if identity.startswith(real)]
            if inside:
                path, what = inside[0]
                raise UserError(f"output_name {args.output_name!r} in output_dir {output_dir} may replace or delete {candidate}, "
                                f"which holds an input of this run: {path} ({what}); choose another output_name or "
                                "output_dir, or move the input")


# -- writable folders -------------------------------------------------------------------------------
def ensure_writable(folder: str | os.PathLike, option: str) -> None:
    """Create `folder` and prove a file can be written in it (then delete the probe)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
        try:
            os.write(fd, b"0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"{option} {folder}: cannot be created, because a file is in the way ({folder} or one of its parents "
                        f"is a file, not a folder); choose another {option}") from None
    except OSError as error:
        failure = write_failure(folder / ".write-test", error)
        reason = failure.reason if failure else (error.strerror or str(error))
        raise UserError(f"{option} {folder}: cannot write there ({reason}); choose a writable {option}") from None


@contextlib.contextmanager
def output_guard(resolved, items) -> Iterator[None]:
    """The pre-flight checks, then the output_dir lock held for the duration of the block."""
    args, notices = resolved.args, resolved.notices
    for name in ("output_name", "log_prefix"):
        check_plain_name(getattr(args, name), name, resolved.sources.get(name, "command line"))
    output_dir = Path(args.output_dir)
    check_collisions(args, items)
    ensure_writable(output_dir, "output_dir")
    if args.log_with and args.logging_dir:
        ensure_writable(args.logging_dir, "logging_dir")
    if not is_main_process():
        yield
        return
    with OutputLock(output_dir, notices):
        removed = remove_stale_temporaries(output_dir, args.output_name) + \
            remove_stale_temporaries(output_dir / "sample", args.output_name)
        if removed:
            notices.append(f"removed {len(removed)} leftover temporary file(s) of an interrupted save in {output_dir} "
                           f"(e.g. {removed[0].name})")
        yield


# -- free space ---------------------------------------------------------------------------------------
_OPTIMIZER_STATE_BYTES = {  # per trainable fp32 parameter, as held in optimizer.pt
    "adamw": 8, "adam": 8, "adamw8bit": 2, "pagedadamw8bit": 2, "lion": 4, "lion8bit": 1, "sgdnesterov": 4,
    "sgdnesterov8bit": 1, "sgd": 4, "adafactor": 4, "prodigy": 16, "dadaptadam": 12, "came": 8,
}


def _kept(total_saves: int, keep_last: int | None) -> int:
    return min(total_saves, keep_last) if keep_last else total_saves


def estimate_output(args, network, optimizer_name: str, max_steps: int, epochs: int, save_every_n_epochs: int | None = None) -> dict:
    """Bytes the run's saves will occupy in output_dir at most, and how that number was made."""
    import torch

    from library.lora.file_io import save_dtype

    tensors = list(network.state_dict().values())
    dtype = save_dtype(args.save_precision)
    header = 256 * len(tensors) + 32 * 1024  # safetensors header: ~150-250 bytes a tensor name, plus metadata and hashes
    lora_bytes = sum(t.numel() * (dtype.itemsize if dtype is not None and t.is_floating_point() else t.element_size())
                     for t in tensors) + header
    trainable = sum(t.numel() for t in tensors if t.is_floating_point())
    per_param = _OPTIMIZER_STATE_BYTES.get(optimizer_name.lower())
    state_bytes = trainable * (4 + (per_param or 8)) + sum(t.numel() * torch.float32.itemsize for t in tensors if not t.is_floating_point())
    # network header; torch.save's zip entries (~500 bytes per optimizer tensor); scheduler, RNG, progress
    state_bytes += header + 512 * len(tensors) + 64 * 1024
    every = save_every_n_epochs if save_every_n_epochs is not None else args.save_every_n_epochs
    epoch_saves = (epochs - 1) // every if every else 0
    step_saves = (max_steps - 1) // args.save_every_n_steps if args.save_every_n_steps else 0
    step_keep = args.save_last_n_steps // args.save_every_n_steps + 1 if args.save_last_n_steps and args.save_every_n_steps else None
    loras = 1 + _kept(epoch_saves, args.save_last_n_epochs) + _kept(step_saves, step_keep)
    states = 0
    if args.save_state:
        step_state_keep = (args.save_last_n_steps_state // args.save_every_n_steps + 1
                           if args.save_last_n_steps_state and args.save_every_n_steps else None)
        states += _kept(epoch_saves, args.save_last_n_epochs_state) + _kept(step_saves, step_state_keep)
    if args.save_state or args.save_state_on_train_end:
        states += 1
    in_flight = 1 if states else 0  # a state is written beside the one it replaces
    return {"lora_bytes": lora_bytes, "loras": loras, "state_bytes": state_bytes, "states": states + in_flight,
            "total": lora_bytes * loras + state_bytes * (states + in_flight), "certain": per_param is not None}


def check_free_space(args, network, optimizer, max_steps: int, epochs: int, save_every_n_epochs: int | None,
                     notices: list) -> dict:
    """A shortfall is an error before training (a notice when the optimizer's state size is a guess).
    `save_every_n_epochs`: the cadence in force (save_n_epoch_ratio's, when given)."""
    estimate = estimate_output(args, network, type(optimizer).__name__, max_steps, epochs, save_every_n_epochs)
    free = free_bytes(args.output_dir)
    if free is None or free >= estimate["total"]:
        return estimate
    detail = f"{estimate['loras']} LoRA file(s) of {describe_size(estimate['lora_bytes'])}"
    if estimate["states"]:
        detail += f" and {estimate['states']} training state(s) of {describe_size(estimate['state_bytes'])}"
    message = (f"output_dir {args.output_dir} has {describe_size(free)} free, but this run will write about "
               f"{describe_size(estimate['total'])} there ({detail})")
    if not estimate["certain"]:
        notices.append(message + "; the optimizer's state size is estimated, so this may still fit")
        return estimate
    raise UserError(message + "; free some space, keep fewer saves (save_last_n_epochs, save_last_n_steps, "
                    "save_last_n_*_state) or choose another output_dir")

