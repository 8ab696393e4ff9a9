#!/usr/bin/env bash
# End-to-end demo on the built-in tiny SDXL model, offline, on a CPU.
# Usage: bash tools/quickstart.sh [OUTPUT_DIR]   (default: demo_output/)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-demo_output}"
mkdir -p "$out"

echo "== 1. Build the tiny SDXL-architecture model (diffusers folder + single file)"
python tools/make_tiny_sdxl.py --output_dir "$out/tiny_sdxl" --seed 0

echo "== 2. Load it from the single file (offline, architecture read from the weights)"
python tools/inspect_sdxl.py "$out/tiny_sdxl/sdxl_tiny.safetensors" \
  --save_diffusers "$out/tiny_sdxl_converted"

echo "== 3. Load the converted diffusers folder back"
python tools/inspect_sdxl.py "$out/tiny_sdxl_converted"

echo
echo "Artefacts:"
echo "  tiny model (diffusers):    $out/tiny_sdxl/diffusers"
echo "  tiny model (single file):  $out/tiny_sdxl/sdxl_tiny.safetensors"
echo "  converted diffusers copy:  $out/tiny_sdxl_converted"
