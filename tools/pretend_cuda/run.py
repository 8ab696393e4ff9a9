"""Run a script of this project (or any Python script) as on a machine with GPUs, on a CPU-only torch:

    python tools/pretend_cuda/run.py sdxl_train_network.py --config_file my.toml
    PRETEND_CUDA_DEVICES=2 python tools/pretend_cuda/run.py tools/sdxl_gen_img.py ...

Every tensor the script puts on cuda reports cuda:N and computes on the CPU; a tensor left on the
wrong device raises CUDA's own error at the line that mixes them (see tools/pretend_cuda/__init__.py).
"""
from __future__ import annotations

import runpy
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def main(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        raise SystemExit(0 if argv else 2)
    sys.path.insert(0, str(REPO))
    from tools.pretend_cuda import install

    install()
    script = argv[0]
    sys.argv = [script, *argv[1:]]
    sys.path.insert(0, str(Path(script).resolve().parent))
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
