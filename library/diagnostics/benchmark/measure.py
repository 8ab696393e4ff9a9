"""Measurement helpers: statistics of repeated timings, process memory, a peak-RSS sampler."""
from __future__ import annotations

import os
import statistics
import threading
import time


def summarize(values: list[float]) -> dict:
    """median, min, max and relative spread ((max - min) / median) of repeated measurements."""
    values = [float(v) for v in values if v is not None]
    if not values:
        return {"median": None, "min": None, "max": None, "spread": None, "n": 0}
    median = statistics.median(values)
    return {"median": median, "min": min(values), "max": max(values),
            "spread": (max(values) - min(values)) / median if median else None, "n": len(values)}


def rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def process_age_seconds() -> float:
    """Seconds since this process was created (the OS's start time, before Python itself started)."""
    import psutil

    return time.time() - psutil.Process().create_time()


class PeakRSS:
    """Samples this process's resident memory in a thread; `peak` is the largest value seen."""

    def __init__(self, interval: float = 0.005):
        self.interval, self.peak = interval, 0
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        import psutil

        process = psutil.Process(os.getpid())
        self.peak = process.memory_info().rss

        def sample():
            while not self._stop.is_set():
                self.peak = max(self.peak, process.memory_info().rss)
                self._stop.wait(self.interval)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())
        return False


def peak_rss_since_start() -> int:
    """The kernel's high-water mark of this process's resident memory (ru_maxrss)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
