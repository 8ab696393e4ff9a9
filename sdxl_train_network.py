"""Train a LoRA (or LyCORIS network) on SDXL.

    accelerate launch sdxl_train_network.py --config_file config_file.toml [--option value ...]

Options and TOML sections are kohya sd-scripts'; every key is validated before a model loads.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from library.errors import run_cli  # noqa: E402


def main(argv=None) -> int:
    from library.training.config_loader import resolve_config, write_resolved_config
    from library.training.trainer import train

    resolved = resolve_config(argv)
    if resolved.args.estimate_memory:  # shapes only: no weights are loaded
        from library.training.memory_estimate import print_estimate
        return print_estimate(resolved.args) or 0
    if resolved.args.output_config:
        print(f"wrote {write_resolved_config(resolved)}")
        return 0
    train(resolved)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
