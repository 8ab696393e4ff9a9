"""User-facing errors: `UserError` is a problem the user can fix (a wrong path, a bad option, a file
that is not what it claims to be); its message says what is wrong and how to fix it. Scripts print it
as one line through library/entry.py's `run_cli`. This module imports nothing from the project.
"""
from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input; the message says what is wrong and how to fix it."""
