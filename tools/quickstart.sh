#!/usr/bin/env bash
# End-to-end demo on the built-in tiny SDXL model, offline, on a CPU (a few minutes):
# model -> images -> trigger word -> metadata -> buckets + latents -> LoRA training (accelerate)
# with samples and TensorBoard logs.
# Usage: bash tools/quickstart.sh [OUTPUT_DIR]   (default: demo_output/)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-demo_output}"
mkdir -p "$out"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"  # tiny model: one thread is fastest

echo "== 1/6 Build the tiny SDXL-architecture model (diffusers folder + single file)"
python tools/make_tiny_sdxl.py --output_dir "$out/tiny_sdxl" --seed 0
model="$out/tiny_sdxl/sdxl_tiny.safetensors"

echo "== 2/6 Create the image set (BLIP-style .caption and WD14-style .txt tags per image)"
python tools/make_demo_images.py --output_dir "$out/images" --count 8

echo "== 3/6 Trigger word first, and remove tags that describe the concept itself (tag pollution)"
python finetune/edit_tags.py "$out/images" --add catwomen --remove "black bodysuit,mask" --dedupe --frequency 8

echo "== 4/6 Merge captions and tags into metadata"
python finetune/merge_all_to_metadata.py "$out/images" "$out/meta_clean.json"

echo "== 5/6 Aspect-ratio buckets and VAE latents"
python finetune/prepare_buckets_latents.py "$out/images" "$out/meta_clean.json" "$out/meta_lat.json" "$model" \
  --max_resolution 64,64 --min_bucket_reso 32 --max_bucket_reso 128 --bucket_reso_steps 32

echo "== 6/6 Train the LoRA with accelerate"
accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
  sdxl_train_network.py --config_file train_config/quickstart_tiny/config_file.toml \
  --pretrained_model_name_or_path "$model" --train_data_dir "$out/images" --in_json "$out/meta_lat.json" \
  --output_dir "$out/lora" --logging_dir "$out/logs"

echo
echo "Artefacts:"
echo "  tiny model:        $out/tiny_sdxl/  (diffusers/ and sdxl_tiny.safetensors)"
echo "  images + tags:     $out/images/  (with <image>_<W>x<H>_sdxl.npz latent caches)"
echo "  metadata:          $out/meta_clean.json, $out/meta_lat.json"
echo "  LoRA files:        $(ls "$out"/lora/*.safetensors | tr '\n' ' ')"
echo "  resumable states:  $(ls -d "$out"/lora/*-state | tr '\n' ' ')"
echo "  samples:           $out/lora/sample/"
echo "  TensorBoard logs:  $out/logs/  (tensorboard --logdir $out/logs)"
