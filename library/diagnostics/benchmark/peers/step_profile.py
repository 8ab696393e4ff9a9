"""Profile whole training steps of any trainer with a torch optimizer, ours or kohya's:

    python library/diagnostics/benchmark/peers/step_profile.py --output ours.json -- sdxl_train_network.py --config_file c.toml
    kohya-venv/bin/python library/diagnostics/benchmark/peers/step_profile.py --output kohya.json -- sd-scripts/sdxl_train_network.py ...

A global optimizer step hook counts optimizer steps: the profiler starts after the `--after`-th step
and stops `--steps` steps later, the same window on both sides (data, forward, backward, optimizer,
logging). The output holds the op table (self CPU time per aten op, the top 60), the total and the
window's wall time. Standalone on purpose (torch only): it also runs in kohya's venv.
"""
from __future__ import annotations

import argparse
import json
import runpy
import sys
import time
from pathlib import Path


def install(output: Path, after: int, steps: int, shapes: bool = False) -> None:
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    state = {"steps": 0, "profiler": None, "started": None}

    def after_step(optimizer, args, kwargs):
        state["steps"] += 1
        if state["steps"] == after:
            state["profiler"] = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=shapes)
            state["profiler"].__enter__()
            state["started"] = time.perf_counter()
        elif state["steps"] == after + steps and state["profiler"] is not None:
            wall = time.perf_counter() - state["started"]
            state["profiler"].__exit__(None, None, None)
            write(state["profiler"], output, wall, steps, shapes)
            state["profiler"] = None

    register_optimizer_step_post_hook(after_step)


def write(profiler, output: Path, wall: float, steps: int, shapes: bool = False) -> None:
    averages = profiler.key_averages(group_by_input_shape=shapes)
    rows = sorted(({"op": e.key, "calls": e.count, "self_cpu_seconds": e.self_cpu_time_total / 1e6,
                    "cpu_seconds": e.cpu_time_total / 1e6, **({"shapes": str(e.input_shapes)} if shapes else {})}
                   for e in averages), key=lambda r: -r["self_cpu_seconds"])
    total = sum(r["self_cpu_seconds"] for r in rows)
    output.write_text(json.dumps({"steps": steps, "wall_seconds": wall, "self_cpu_seconds_total": total, "ops": rows[:200 if shapes else 60]},
                                 indent=1), encoding="utf-8")
    print(f"step_profile: {steps} step(s), {wall:.1f} s wall, written to {output}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, help="JSON file for the op table")
    parser.add_argument("--after", type=int, default=1, help="start after this many logged steps (default 1: skip the first)")
    parser.add_argument("--steps", type=int, default=1, help="steps profiled (default 1)")
    parser.add_argument("--shapes", action="store_true", help="one row per (op, input shapes)")
    parser.add_argument("script", help="the training script, then its arguments (after --)")
    parser.add_argument("arguments", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    install(Path(args.output).resolve(), args.after, args.steps, args.shapes)
    script = Path(args.script).resolve()
    sys.argv = [str(script), *[a for a in args.arguments if a != "--"]]
    sys.path.insert(0, str(script.parent))
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main()
