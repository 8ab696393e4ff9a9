"""Wait until the training run writing into an output_dir has ended (its state saved, its lock released).

    python tools/wait_for_run.py OUTPUT_DIR [--timeout SECONDS]

For job scripts: `accelerate launch` with one process exits at once on SIGTERM while the trainer
it started is still saving its state; this returns when the trainer is done (at once when no run
holds the folder). Exit codes: 0 done, 2 still running after --timeout (one `error:` line).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from library.entry import run_cli  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output_dir", help="the run's output_dir (where its .sdxl_train.lock is)")
    parser.add_argument("--timeout", type=float, default=None, help="give up after this many seconds (default: wait)")
    args = parser.parse_args(argv)
    from library.training.outputs.output_lock import wait_for_release

    started = time.monotonic()
    info = wait_for_release(args.output_dir, args.timeout)
    if info is None:
        print(f"no training run is writing to {args.output_dir}")
    else:
        print(f"the training run in {args.output_dir} (PID {info.get('pid', '?')}) has ended; waited "
              f"{time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
