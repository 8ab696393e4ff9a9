"""The memory one training step adds to the process, measured by the process itself.

On the CPU: anonymous resident memory (RssAnon of /proc/self/status: heap and anonymous mappings,
where tensors live; the memory-mapped checkpoint is file-backed and does not count). Before the
step glibc is asked to return freed memory (`malloc_trim(0)`), so the baseline is what is really
live; during the step a thread samples RssAnon every 10 ms, and the kernel's own high-water mark
(VmHWM, reset through /proc/self/clear_refs) catches a peak between two samples. On a GPU:
`torch.cuda.max_memory_allocated` over the step minus what was allocated before it.

This is what `--estimate_memory`'s working memory (activations + LoRA gradients) is calibrated
against (library/diagnostics/benchmark/calibration.py, tests/test_memory_estimate.py).
"""
from __future__ import annotations

import ctypes
import threading
from pathlib import Path

STATUS = Path("/proc/self/status")
# glibc raises its mmap threshold (up to 32 MiB) each time a large block is freed, so later blocks of
# that size come from the heap, where freed memory stays with the process: a training step's RssAnon
# then grows ~1.6x the tensor bytes it allocates (docs/performance.md). A fixed threshold (this
# environment, for a child process) hands every block above 16 KiB back when it is freed, so the
# process's memory follows its tensors plus what kernels allocate beside them (at 128 KiB the heap's
# fragmentation still added ~40% on `small` at 128 px). It costs speed (1.5-3x slower steps: every
# activation is a fresh mapping), so the trainer does not use it: it is for measuring.
TRACKING_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(16 * 1024)}


def status_kib() -> dict[str, int]:
    """The kB fields of /proc/self/status (VmRSS, VmHWM, RssAnon, RssFile, ...)."""
    out = {}
    for line in STATUS.read_text().splitlines():
        name, _, value = line.partition(":")
        parts = value.split()
        if len(parts) == 2 and parts[1] == "kB":
            out[name] = int(parts[0])
    return out


def rss_anon_bytes() -> int:
    return status_kib()["RssAnon"] * 1024


def malloc_trim() -> None:
    """Give freed heap memory back to the OS (glibc keeps it otherwise, and RSS would overstate)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class StepMemory:
    """`with StepMemory() as m: <one training step>` then `m.added`: the peak the step added above
    what was live when it started (bytes). CPU: RssAnon; CUDA: the allocator's peak."""

    def __init__(self, interval: float = 0.010, cuda: bool = False):
        self.interval, self.cuda = interval, cuda
        self.baseline = self.sampled_peak = self.hwm_peak = 0
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            self.baseline = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            return self
        malloc_trim()
        self.baseline = self.sampled_peak = rss_anon_bytes()
        self._hwm = reset_peak()

        def sample():
            while not self._stop.wait(self.interval):
                self.sampled_peak = max(self.sampled_peak, rss_anon_bytes())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            self.sampled_peak = self.hwm_peak = torch.cuda.max_memory_allocated()
            return False
        self._stop.set()
        self._thread.join()
        status = status_kib()
        self.sampled_peak = max(self.sampled_peak, status["RssAnon"] * 1024)
        # VmHWM counts file pages too: take off what is file-backed now (the step reads no new
        # file pages after the first step, so this is the anonymous peak)
        if self._hwm:
            self.hwm_peak = (status["VmHWM"] - status.get("RssFile", 0) - status.get("RssShmem", 0)) * 1024
        return False

    @property
    def peak(self) -> int:
        return max(self.sampled_peak, self.hwm_peak)

    @property
    def added(self) -> int:
        return self.peak - self.baseline

    def as_dict(self) -> dict:
        return {"baseline": self.baseline, "sampled_peak": self.sampled_peak, "hwm_peak": self.hwm_peak, "added": self.added,
                "sampled_added": self.sampled_peak - self.baseline}
