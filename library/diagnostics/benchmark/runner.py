"""Running benchmark tasks in child processes and collecting their JSON results."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


class TaskFailed(RuntimeError):
    pass


THREADS: int | None = None  # torch intra-op threads of every task (set by tools/bench.py --threads)
# False runs every task inside the calling process (tools/bench.py --in_process): only for checking
# the report's shape quickly; memory and start-up figures are then not those of a fresh process.
ISOLATED = True


def run_task(task: str, params: dict, timeout: float = 1800, env: dict | None = None) -> dict:
    """Run one worker task in a fresh Python process; its `BENCH_RESULT` line parsed."""
    if THREADS and not params.get("threads"):
        params = {**params, "threads": THREADS}
    if not ISOLATED:
        from library.diagnostics.benchmark.worker import run_in_process

        return json.loads(json.dumps(run_in_process(task, params)))
    command = [sys.executable, "-m", "library.diagnostics.benchmark.worker", task, json.dumps(params)]
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1", **(env or {})}
    done = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=timeout)
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("BENCH_RESULT "):
            return json.loads(line[len("BENCH_RESULT "):])
    tail = "\n".join((done.stdout + done.stderr).splitlines()[-25:])
    raise TaskFailed(f"benchmark task {task} failed (exit {done.returncode}):\n{tail}")
