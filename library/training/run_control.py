"""Stopping a run cleanly: Ctrl-C or SIGTERM finishes the current optimizer step, then the trainer
saves a resumable state and the LoRA so far instead of dying mid-write. A second Ctrl-C stops at once."""
from __future__ import annotations

import signal
import sys


class StopRequest:
    def __init__(self):
        self.requested = False
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested:  # second signal: the user really wants out now
            self.restore()
            raise KeyboardInterrupt
        self.requested = True
        print("\nstop requested: finishing this step, then saving a resumable state (Ctrl-C again to abort)", file=sys.stderr)

    def install(self) -> "StopRequest":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. called from a test runner thread)
                pass
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
