"""Child-process entry of the benchmark: `python -m library.diagnostics.benchmark.worker <task> <json params>`.

Prints one line `BENCH_RESULT <json>` (everything else on stdout/stderr is the task's own output).
"""
from __future__ import annotations

import json
import sys


def run_in_process(task: str, params: dict) -> dict:
    if task in ("ours", "reference", "startup", "imports"):
        from library.diagnostics.benchmark import training as module
    elif task in ("caching", "text_caching", "tagging", "indexing"):
        from library.diagnostics.benchmark import preparation as module
    elif task in ("calibration",):
        from library.diagnostics.benchmark import calibration as module
    elif task in ("efficiency",):
        from library.diagnostics.benchmark import efficiency as module
    elif task in ("load_memory", "estimate"):
        from library.diagnostics.benchmark import realsize_tasks as module
    elif task in ("hardware",):
        from library.diagnostics.benchmark import hardware_tasks as module
    elif task in ("toy_world", "learning"):
        from tools.toy_world import learning as module
    else:
        raise SystemExit(f"unknown task {task}")
    return getattr(module, f"run_{task}")(params)


def main(argv: list[str]) -> int:
    task, params = argv[0], json.loads(argv[1])
    if params.get("threads"):
        import torch

        torch.set_num_threads(params["threads"])
    result = run_in_process(task, params)
    sys.stdout.flush()
    print("BENCH_RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
