#!/usr/bin/env bash
# Train with one of the shipped configs, as the tutorial's SDXL_fintune_LoRA.sh does.
# Usage: bash train_config/SDXL_fintune_LoRA.sh [CONFIG_FOLDER] [ACCELERATE_CONFIG] [extra options...]
#   CONFIG_FOLDER      a folder under train_config/ (default XL_LoRA_config)
#   ACCELERATE_CONFIG  an accelerate YAML (default train_config/accelerate/single_gpu.yaml)
# Extra options override the config file, e.g. --max_train_epochs 10 --output_dir ./runs/a
set -euo pipefail
cd "$(dirname "$0")/.."
folder="${1:-XL_LoRA_config}"; shift || true
accelerate_config="${1:-train_config/accelerate/single_gpu.yaml}"; shift || true
accelerate launch --config_file "$accelerate_config" --num_cpu_threads_per_process=8 \
  sdxl_train_network.py \
  --config_file "train_config/$folder/config_file.toml" \
  --sample_prompts "train_config/$folder/sample_prompt.toml" \
  "$@"
