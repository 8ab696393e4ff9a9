"""A save that fails mid-run (full disk, permissions, a vanished mount) must not throw away the trained
weights: retry once, then write the LoRA (and the state, when one was due) to a fallback folder,
name it in the error and stop the run with a non-zero exit code.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Callable, TypeVar

from tqdm import tqdm

from library.errors import UserError
from library.file_io import WriteFailed

RETRY_DELAY = 2.0  # seconds before the one retry (a network mount may come back; a full disk will not)
FALLBACK_FOLDER = "sdxl_lora_rescue"
T = TypeVar("T")


class SaveFailed(UserError):
    """Saving into output_dir failed twice; `rescued` is where the weights went instead (or None)."""

    def __init__(self, message: str, rescued: Path | None):
        super().__init__(message)
        self.rescued = rescued


def fallback_folders(output_name: str) -> list[Path]:
    """Where the weights go when output_dir cannot take them: the home folder, then the temp folder."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    bases = [Path.home() / FALLBACK_FOLDER, Path(tempfile.gettempdir()) / FALLBACK_FOLDER]
    return [base / f"{output_name}-{stamp}" for base in bases]


def save_or_rescue(write: Callable[[Path], T], output_dir: Path, output_name: str) -> T:
    """`write(folder)` into output_dir; on a write failure retry once, then into a fallback folder
    and raise SaveFailed naming it. `write` returns what it saved (shown in the error)."""
    try:
        return write(output_dir)
    except (WriteFailed, OSError) as error:
        tqdm.write(f"saving into {output_dir} failed ({_reason(error)}); retrying in {RETRY_DELAY:g} s")
    time.sleep(RETRY_DELAY)
    try:
        return write(output_dir)
    except (WriteFailed, OSError) as error:
        failure = error
    for folder in fallback_folders(output_name):
        try:
            saved = write(folder)
        except (WriteFailed, OSError) as error:
            tqdm.write(f"fallback folder {folder} failed too ({_reason(error)})")
            continue
        raise SaveFailed(f"saving into {output_dir} failed twice ({_reason(failure)}); the trained weights were saved to "
                         f"{saved} instead: copy them somewhere safe, fix output_dir and resume from there with --resume",
                         folder)
    raise SaveFailed(f"saving into {output_dir} failed twice ({_reason(failure)}) and no fallback folder could take the "
                     f"weights ({', '.join(str(f.parent) for f in fallback_folders(output_name))}); free some space", None)


def _reason(error: BaseException) -> str:
    if isinstance(error, WriteFailed):
        return error.reason
    return getattr(error, "strerror", None) or str(error)
