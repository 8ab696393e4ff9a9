"""Train a LoRA (or LyCORIS network) on SDXL.

    accelerate launch sdxl_train_network.py --config_file config_file.toml [--option value ...]

Options and TOML sections are kohya sd-scripts'; every key is validated before a model is loaded.
Exit codes: 0 done, 2 a problem to fix (one `error:` line), 130 / 143 stopped by Ctrl-C / SIGTERM
after saving a resumable state (the last line says how to resume).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from library.entry import run_cli  # noqa: E402


def main(argv=None) -> int:
    from library.training.config.config_loader import resolve_config, write_resolved_config
    from library.training.outputs.preflight import is_main_process
    from library.training.outputs.run_control import RunStopped, resume_command
    from library.training.loop import train

    argv = list(sys.argv[1:] if argv is None else argv)
    resolved = resolve_config(argv)
    if resolved.args.estimate_memory:  # shapes only: no weights are loaded
        from library.training.memory.memory_estimate import print_estimate
        return print_estimate(resolved.args) or 0
    if resolved.args.output_config:
        print(f"wrote {write_resolved_config(resolved)}")
        return 0
    try:
        train(resolved)
    except RunStopped as stopped:
        if is_main_process():
            sys.stdout.flush()
            print(f"stopped at step {stopped.step}; state saved in {stopped.state_folder}\n"
                  f"resume with: {resume_command(os.path.relpath(__file__), argv, stopped.output_dir)}", file=sys.stderr)
        return stopped.exit_code
    return 0


if __name__ == "__main__":
    from library.process_exit import exit_now

    exit_now(run_cli(main))  # a finished run skips the interpreter's ~2 s teardown
