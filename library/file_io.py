"""Atomic file writes: data goes to a temporary file beside the target, then is renamed into place.

A killed process therefore never leaves a half-written output, and an existing file is only
replaced once the new one is complete. Temporary files are hidden (`.<name>.<random>.tmp`) and
get the permissions an ordinary `open()` would give (0666 or 0777 minus the umask), so a UI or a
colleague running as another user can read the results. A write that fails because the disk is
full, read-only or not ours becomes a `WriteFailed` error naming the file and the cause, whichever
library raised it (an OSError, torch.save's RuntimeError, safetensors' SafetensorError).
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator

from library.errors import UserError

# errno values that mean "this location cannot take the write", not a bug in our code
_WRITE_ERRNOS = {
    errno.ENOSPC: "no space left on the disk",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EFBIG: "file too large for this file system",
}
# torch.save reports a failed write (ENOSPC, EIO) only through these texts, without an errno
_TORCH_WRITE_FAILURES = ("unexpected pos", "iostream error", "failed writing file", "file write failed")
# Rust libraries (safetensors' SafetensorError, a plain Exception) carry the errno only in their text:
# "Error while serializing: I/O error: No space left on device (os error 28)"
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


class WriteFailed(UserError):
    """Writing `path` failed for a reason outside the program (full disk, permissions, read-only)."""

    def __init__(self, path, reason: str, advice: str = "free some space or choose another folder, then run again"):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path}: cannot write ({reason}); {advice}")


def current_umask() -> int:
    """The process umask, read without changing it where the system allows (Linux /proc)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: read it by setting it, then restore it at once
    os.umask(mask)
    return mask


def apply_umask(path: str | os.PathLike, directory: bool = False) -> None:
    """Give `path` the mode a plain open()/mkdir() would have (mkstemp/mkdtemp use 0600/0700)."""
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


def free_bytes(folder: str | os.PathLike) -> int | None:
    """Free bytes on the file system holding `folder` (or its nearest existing parent)."""
    folder = Path(folder)
    for candidate in (folder, *folder.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None


def describe_size(count: int | float | None) -> str:
    if count is None:
        return "unknown"
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{int(count)} bytes"


def write_failure(path: str | os.PathLike, error: BaseException) -> WriteFailed | None:
    """A WriteFailed describing `error` if it is an environment problem while writing `path`, else None."""
    path = Path(path)
    reason = None
    if isinstance(error, WriteFailed):
        return error
    rust_errno = _RUST_OS_ERROR.search(str(error)) if not isinstance(error, OSError) else None
    if isinstance(error, OSError) and error.errno in _WRITE_ERRNOS:
        reason = _WRITE_ERRNOS[error.errno]
    elif rust_errno and int(rust_errno.group(1)) in _WRITE_ERRNOS:
        reason = _WRITE_ERRNOS[int(rust_errno.group(1))]
    elif isinstance(error, (OSError, RuntimeError)) and any(text in str(error) for text in _TORCH_WRITE_FAILURES):
        reason = "the write was cut short, usually because the disk is full"
    if reason is None:
        return None
    free = free_bytes(path.parent)
    if free is not None and reason.startswith(("no space", "the write was cut")):
        reason += f"; {describe_size(free)} free in {path.parent}"
    return WriteFailed(path, reason)


@contextlib.contextmanager
def translated_write_errors(path: str | os.PathLike) -> Iterator[None]:
    """Turn a full-disk / permission / read-only failure inside the block into WriteFailed(path).
    Any exception type is looked at (safetensors raises a plain Exception subclass); what is not
    such a failure is raised unchanged."""
    try:
        yield
    except Exception as error:
        failure = write_failure(path, error)
        if failure is None:
            raise
        raise failure from None


def _make_parent(target: Path) -> None:
    with translated_write_errors(target.parent):
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise UserError(f"{target.parent}: cannot create this folder: a file of that name (or of a parent folder) is in the way") from None


# `.<name>.<8 characters of mkstemp>.tmp`: only the names atomic_path itself creates
_TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")
ABANDONED_AFTER_S = 3600.0  # an atomic write takes seconds at most: an older temporary was left by a killed process
_swept_folders: set[Path] = set()


def sweep_abandoned_temporaries(folder: Path) -> list[Path]:
    """Remove, once per folder and process, the temporaries of atomic writes that were killed
    mid-way (e.g. latent caches beside dataset images after a SIGKILL): only names atomic_path
    makes, only when older than an hour, so no live writer's file is touched."""
    folder = Path(folder)
    if folder in _swept_folders:
        return []
    _swept_folders.add(folder)
    removed, now = [], time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    for entry in entries:
        try:
            if _TEMP_NAME.match(entry.name) and entry.is_file(follow_symlinks=False) \
                    and now - entry.stat(follow_symlinks=False).st_mtime > ABANDONED_AFTER_S:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue  # another process took it first, or not ours to remove
    return removed


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto `target` if the block succeeds."""
    target = Path(target)
    _make_parent(target)
    sweep_abandoned_temporaries(target.parent)
    with translated_write_errors(target):
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
    tmp = Path(tmp_name)
    try:
        with translated_write_errors(target):
            yield tmp
            apply_umask(tmp)
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def make_temp_dir(target: str | os.PathLike) -> Path:
    """A hidden temporary folder beside `target` (to be renamed onto it), with umask permissions."""
    target = Path(target)
    _make_parent(target)
    with translated_write_errors(target):
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        apply_umask(tmp, directory=True)
    return tmp


@contextlib.contextmanager
def atomic_folder(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a hidden temporary folder; when the block succeeds it replaces `target` (an older
    folder of that name is moved aside first and deleted only once the new one is in place)."""
    target = Path(target)
    tmp = make_temp_dir(target)
    try:
        with translated_write_errors(target):
            yield tmp
            if target.exists():
                old = target.with_name(f".{target.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(target, old)
                os.replace(tmp, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_stale_temporaries(folder: str | os.PathLike, stem: str, older_than: float = 0.0) -> list[Path]:
    """Delete the hidden leftovers of killed atomic writes of outputs named `stem*` in `folder`:
    `.<stem>....tmp` files and `.<stem>....` temporary/old folders. Returns what was removed.

    Only call this while no other process can be writing these names (e.g. holding the output lock).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed, now = [], time.time()
    for entry in folder.iterdir():
        name = entry.name
        # ".<stem>." / ".<stem>-" / ".<stem>_": this output's own names, not those of "<stem>2"
        if not name.startswith(f".{stem}") or name[len(stem) + 1 : len(stem) + 2] not in (".", "-", "_"):
            continue
        try:
            if now - entry.lstat().st_mtime < older_than:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            elif name.endswith(".tmp"):
                entry.unlink()
            else:
                continue
        except OSError:
            continue  # not ours to fight over; a later run tries again
        removed.append(entry)
    return removed


def write_text_atomic(target: str | os.PathLike, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(target: str | os.PathLike, data: object) -> None:
    write_text_atomic(target, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def save_safetensors_atomic(tensors: dict, target: str | os.PathLike, metadata: dict | None = None) -> None:
    """safetensors.torch.save_file, but never leaving a partial file behind."""
    from safetensors.torch import save_file

    tensors = {k: v.contiguous() for k, v in tensors.items()}
    with atomic_path(target) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
