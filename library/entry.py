"""The command-line wrapper every script's `main` runs in: a UserError becomes a single `error: ...`
line and exit code 2 instead of a traceback, and so does an OSError that can only mean a full or
read-only disk (or a Rust library's error carrying such an errno, e.g. safetensors' "(os error 28)");
anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import errno
import os
import re
import sys
from typing import Callable, Sequence

from library.errors import UserError
from library.file_io import write_failure

_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)  # only ever about writing


def _rust_disk_errno(error: Exception) -> int | None:
    """The errno of a full or read-only disk in the text of a non-OSError ("... (os error 28)")."""
    found = re.search(r"\(os error (\d+)\)", str(error))
    return int(found.group(1)) if found and int(found.group(1)) in _DISK_ERRNOS else None


def run_cli(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> int:
    """Run a script's `main(argv)`, printing a UserError as one line instead of a traceback."""
    try:
        result = main(argv)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as error:  # a full or read-only disk outside the atomic writers (logs, caches of libraries)
        if error.errno not in _DISK_ERRNOS:
            raise
        print(f"error: {write_failure(error.filename or 'a file', error)}", file=sys.stderr)
        return 2
    except Exception as error:  # safetensors' SafetensorError is a plain Exception with the errno in its text
        code = _rust_disk_errno(error)
        if code is None:
            raise
        print(f"error: {write_failure('a file', OSError(code, os.strerror(code)))}", file=sys.stderr)
        return 2
    return result if isinstance(result, int) else 0
