"""A folder whose disk really fills up: a small tmpfs mounted for the test (needs root, as the
test machines run), or where mounting is not allowed, safetensors' writer patched to fail exactly
as it does on a full disk (the same SafetensorError class and text).

    with FullDisk(tmp_path / "disk") as disk:   # an empty folder with room for `size` bytes
        ...                                     # writes succeed
        disk.fill()                             # from now on every write into it fails with ENOSPC
"""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

# what safetensors 0.x raises when the disk fills during serialize_file
SAFETENSORS_FULL_TEXT = "Error while serializing: I/O error: No space left on device (os error 28)"


class FullDisk:
    def __init__(self, folder: Path, size: str = "64m"):
        self.folder, self.size = Path(folder), size
        self.mounted = False
        self._patched = None

    def __enter__(self) -> "FullDisk":
        self.folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0 and shutil.which("mount"):
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size}", "tmpfs", str(self.folder)],
                                  capture_output=True, text=True)
            self.mounted = done.returncode == 0
        return self

    def fill(self) -> None:
        """Take every free byte of the tmpfs (or patch the writer when there is none)."""
        if self.mounted:
            fd = os.open(self.folder / ".filler", os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                for chunk in (1 << 20, 4096, 1):  # big pieces, then the last partial page byte by byte
                    try:
                        while os.write(fd, b"\0" * chunk):
                            pass
                    except OSError as error:
                        assert error.errno == errno.ENOSPC, error
            finally:
                os.close(fd)
            return
        import safetensors.torch
        from safetensors import SafetensorError

        real = safetensors.torch.serialize_file

        def serialize_file(tensors, filename, *args, **kwargs):
            if str(filename).startswith(str(self.folder)):
                raise SafetensorError(SAFETENSORS_FULL_TEXT)
            return real(tensors, filename, *args, **kwargs)

        self._patched = real
        safetensors.torch.serialize_file = serialize_file

    def free(self) -> int:
        return shutil.disk_usage(self.folder).free

    def user_files(self) -> list[str]:
        """Names in the folder other than the filler: what a failed write left behind."""
        return sorted(str(p.relative_to(self.folder)) for p in self.folder.rglob("*") if p.name != ".filler")

    def __exit__(self, *exc) -> None:
        if self._patched is not None:
            import safetensors.torch

            safetensors.torch.serialize_file = self._patched
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.folder)], check=False)
