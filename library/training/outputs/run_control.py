"""Stopping a run cleanly: Ctrl-C or SIGTERM finishes the current optimizer step, then the trainer
saves a resumable state and the LoRA so far instead of dying mid-write. A second Ctrl-C stops at once;
a second SIGTERM does not (see StopRequest._handle).

A stopped run ends with `RunStopped`: the script prints how to resume as its last line and exits
with the shell's code for the signal (130 for SIGINT, 143 for SIGTERM), so `train && publish`
never publishes an unfinished LoRA.
"""
from __future__ import annotations

import os
import shlex
import signal
import sys


class StopRequest:
    def __init__(self):
        self.requested = False
        self.signum: int | None = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested:
            if signum == signal.SIGTERM:
                # Not a user in a hurry but the same stop passed on twice: a scheduler signals every
                # process of the job and torchrun forwards it to its workers again, or a launcher
                # forwards it after the user's Ctrl-C. Keep saving; SIGKILL is the scheduler's way out.
                return
            self.restore()  # a second Ctrl-C: the user really wants out now
            raise KeyboardInterrupt
        self.requested = True
        self.signum = signum
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        print(f"\n{name}: finishing this step, then saving a resumable state (Ctrl-C again to abort)", file=sys.stderr)

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum or signal.SIGINT)

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


class RunStopped(Exception):
    """Training stopped on request after saving a resumable state."""

    def __init__(self, exit_code: int, step: int, state_folder, output_dir):
        super().__init__(f"stopped at step {step}")
        self.exit_code, self.step, self.state_folder, self.output_dir = exit_code, step, state_folder, output_dir


def resume_command(script: str, argv: list[str], output_dir) -> str:
    """The command that continues this run: the same arguments with --resume <output_dir>."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--resume":
            skip = True
            continue
        if arg.startswith("--resume="):
            continue
        kept.append(arg)
    launcher = "accelerate launch [your launch options] " if any(k.startswith("ACCELERATE_") for k in os.environ) else "python "
    return launcher + " ".join(shlex.quote(a) for a in [script, *kept, "--resume", str(output_dir)])
