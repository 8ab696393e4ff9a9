#!/usr/bin/env bash
# Check the GPU code paths on this machine in one command (see tools/gpu_check.py --help):
#   bash tools/gpu_check.sh                 # every row this machine can run; one table at the end
# Builds small SDXL-shaped models, trains each row for a few steps; a few minutes on one GPU.
# On a CPU-only machine the CPU rows run and the GPU rows say "skipped: no CUDA".
set -euo pipefail
cd "$(dirname "$0")/.."
exec python tools/gpu_check.py "$@"
