"""One measured child process of a side-by-side benchmark (peer, kohya): wall time around the whole
process, its own peak RSS (ru_maxrss from wait4, not the maximum over every child so far) and its
peak anonymous memory sampled from /proc (RssAnon: what a memory-mapped model file does not count)."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from library.diagnostics.benchmark.runner import TaskFailed


def anonymous_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_child(command: list[str], cwd: Path, env: dict, log_path: Path, label: str, timeout: float = 7200) -> dict:
    """Run `command` to its end, output in `log_path`; TaskFailed (naming `label`) on failure or timeout."""
    with open(log_path, "w", encoding="utf-8") as log:
        started = time.time()
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        peak_anonymous, next_sample = 0, 0.0
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            now = time.time()
            if now >= next_sample:
                peak_anonymous, next_sample = max(peak_anonymous, anonymous_bytes(process.pid)), now + 0.25
            if now > started + timeout:
                process.kill()
                os.wait4(process.pid, 0)
                raise TaskFailed(f"{label}: no result after {timeout:.0f} s (log: {log_path})")
            time.sleep(0.005)
        ended = time.time()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        tail = "\n".join(log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-30:])
        raise TaskFailed(f"{label} failed (exit {code}; log {log_path}):\n{tail}")
    return {"started": started, "ended": ended, "wall_seconds": ended - started, "peak_rss_bytes": usage.ru_maxrss * 1024,
            "peak_anonymous_bytes": peak_anonymous}
