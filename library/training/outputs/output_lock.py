"""One training run per output folder: `<output_dir>/.sdxl_train.lock` names the run that holds it.

Two runs writing the same LoRA and state names would each report success while only one run's
files survive, so a second run into a folder that a live run holds stops at once, naming that
run's PID. The holder keeps an exclusive `flock` on the file while it runs; the kernel drops it
when the process ends in any way (crash, SIGKILL, power loss), so a lock file left behind is
recognised as stale and taken over with a notice. Where `flock` does not exist (Windows, some
network mounts) the PID in the file is checked instead.

`wait_for_release` is the other side: it blocks until the run holding a folder has ended, so a job
script can wait for a trainer whose launcher has already exited (see docs/training.md, SIGTERM).
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from library.errors import UserError

LOCK_NAME = ".sdxl_train.lock"

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    if os.name != "posix":
        return True  # cannot check without side effects: assume the holder lives
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


def _describe(info: dict) -> str:
    parts = [f"PID {info.get('pid', '?')}"]
    if info.get("host") and info.get("host") != socket.gethostname():
        parts.append(f"on {info['host']}")
    if info.get("started"):
        parts.append(f"started {info['started']}")
    return ", ".join(parts)


class OutputLock:
    """Use as a context manager, or call acquire()/release(); `notices` receives the takeover note."""

    def __init__(self, folder: str | os.PathLike, notices: list | None = None):
        self.path = Path(folder) / LOCK_NAME
        self.notices = notices if notices is not None else []
        self._fd: int | None = None

    def _read(self, fd: int | None = None) -> dict:
        try:
            if fd is not None:
                os.lseek(fd, 0, os.SEEK_SET)
                text = os.read(fd, 65536).decode("utf-8", "replace")
            else:
                text = self.path.read_text(encoding="utf-8", errors="replace")
            info = json.loads(text)
            return info if isinstance(info, dict) else {}
        except (OSError, ValueError):
            return {}

    def _refuse(self, info: dict) -> UserError:
        return UserError(
            f"{self.path.parent}: another training run is writing to this output_dir ({_describe(info)}); "
            f"wait for it to finish, stop it, or choose another output_dir (if that run is gone, delete {self.path})"
        )

    def acquire(self) -> "OutputLock":
        for _ in range(5):  # retried only when the file was replaced between our open and our lock
            fd = self._open()
            try:
                flocked = False
                if fcntl is not None:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        flocked = True
                    except BlockingIOError:
                        raise self._refuse(self._read(fd)) from None
                    except OSError:
                        pass  # a file system without flock (some network/FUSE mounts): the PID check below decides
                    if flocked and os.fstat(fd).st_ino != os.stat(self.path).st_ino:
                        os.close(fd)  # the holder released (deleted) it meanwhile: lock the new file
                        continue
                previous = self._read(fd)
                pid = previous.get("pid")
                same_host = previous.get("host") in (None, socket.gethostname())
                if isinstance(pid, int) and pid != os.getpid():
                    # another machine's run (a shared network folder) can be checked neither by flock nor by PID
                    if not same_host or (not flocked and _pid_alive(pid)):
                        raise self._refuse(previous)
                    self.notices.append(f"{self.path.parent}: took over the lock of an earlier run ({_describe(previous)}) "
                                        "that is no longer running")
                self._write(fd)
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
            return self
        raise UserError(f"{self.path}: could not take the output_dir lock (it keeps changing); is another run starting?")

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except IsADirectoryError:  # e.g. made by a sync tool or by hand: never ours to delete
            raise UserError(f"{self.path}: is a folder, but this is the output_dir lock file of training runs; "
                            f"remove the folder (rmdir {self.path}) or choose another output_dir") from None
        except OSError as error:
            raise UserError(f"{self.path}: cannot open the output_dir lock file ({error.strerror or error}); "
                            "fix its permissions, remove it, or choose another output_dir") from None

    def _write(self, fd: int) -> None:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                "command": " ".join(sys.argv)}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(info).encode("utf-8"))

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            if os.stat(self.path).st_ino == os.fstat(self._fd).st_ino:
                self.path.unlink()
        except OSError:
            pass
        os.close(self._fd)  # also drops the flock
        self._fd = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def wait_for_release(folder: str | os.PathLike, timeout: float | None = None, poll: float = 0.2) -> dict | None:
    """Block until no live run holds `folder`'s lock. Returns the lock's run information when a run
    held it at the start (None when none did); UserError after `timeout` seconds."""
    path = Path(folder) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)  # never created here: a lock file nobody holds must not appear
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder, not the output_dir lock file of a training run") from None
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        info = OutputLock(folder)._read(fd)
        held = False
        while not _released(fd, info):
            held = True
            if deadline is not None and time.monotonic() > deadline:
                raise UserError(f"{folder}: the training run writing there ({_describe(info)}) was still running after "
                                f"{timeout:g} s")
            time.sleep(poll)
        return info if held else None
    finally:
        os.close(fd)  # also drops our shared lock, if we got it


def _released(fd: int, info: dict) -> bool:
    """Whether the run that took the lock open on `fd` has let it go (ended, in whatever way)."""
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # granted once the holder's exclusive lock is gone
            return True
        except BlockingIOError:
            return False
        except OSError:
            pass  # a file system without flock: the PID decides, as in acquire()
    pid = info.get("pid")
    same_host = info.get("host") in (None, socket.gethostname())
    return not (isinstance(pid, int) and same_host and _pid_alive(pid))
