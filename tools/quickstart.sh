#!/usr/bin/env bash
# End-to-end demo on the built-in tiny SDXL model, offline, on a CPU (a few minutes):
# model -> images -> trigger word -> metadata -> buckets + latents -> LoRA training (accelerate)
# with samples and TensorBoard logs -> a LoRA-weight comparison grid.
# Usage: bash tools/quickstart.sh [OUTPUT_DIR]   (default: demo_output/)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-demo_output}"
mkdir -p "$out"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"  # tiny model: one thread is fastest

echo "== 1/7 Build the tiny SDXL-architecture model (diffusers folder + single file)"
python tools/make_tiny_sdxl.py --output_dir "$out/tiny_sdxl" --seed 0
model="$out/tiny_sdxl/sdxl_tiny.safetensors"

echo "== 2/7 Create the image set (BLIP-style .caption and WD14-style .txt tags per image)"
python tools/make_demo_images.py --output_dir "$out/images" --count 8

echo "== 3/7 Trigger word first, and remove tags that describe the concept itself (tag pollution)"
python finetune/edit_tags.py "$out/images" --add catwomen --remove "black bodysuit,mask" --dedupe --frequency 8

echo "== 4/7 Merge captions and tags into metadata"
python finetune/merge_all_to_metadata.py "$out/images" "$out/meta_clean.json"

echo "== 5/7 Aspect-ratio buckets and VAE latents"
python finetune/prepare_buckets_latents.py "$out/images" "$out/meta_clean.json" "$out/meta_lat.json" "$model" \
  --max_resolution 64,64 --min_bucket_reso 32 --max_bucket_reso 128 --bucket_reso_steps 32

echo "== 6/7 Train the LoRA with accelerate"
accelerate launch --quiet --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
  sdxl_train_network.py --config_file train_config/quickstart_tiny/config_file.toml \
  --pretrained_model_name_or_path "$model" --train_data_dir "$out/images" --in_json "$out/meta_lat.json" \
  --output_dir "$out/lora" --logging_dir "$out/logs"

echo "== 7/7 Compare LoRA weights 0 .. 1 (the tutorial's comparison) in one labelled grid"
python tools/sdxl_gen_img.py --ckpt "$model" --network_weights "$out/lora/catwomen_tiny.safetensors" \
  --grid_weights 0,0.2,0.4,0.6,0.8,1.0 --grid_y seed --grid_seeds 1 2 --prompt "catwomen, 1girl, night" \
  --W 64 --H 64 --steps 8 --scale 5 --grid_file "$out/lora_weight_grid.png"

echo
echo "Artefacts:"
echo "  tiny model:        $out/tiny_sdxl/  (diffusers/ and sdxl_tiny.safetensors)"
echo "  images + tags:     $out/images/  (with <image>_<W>x<H>_sdxl.npz latent caches)"
echo "  metadata:          $out/meta_clean.json, $out/meta_lat.json"
echo "  LoRA files:        $(ls "$out"/lora/*.safetensors | tr '\n' ' ')"
echo "  resumable states:  $(ls -d "$out"/lora/*-state | tr '\n' ' ')"
echo "  samples:           $out/lora/sample/"
echo "  TensorBoard logs:  $out/logs/  (tensorboard --logdir $out/logs)"
echo "  weight grid:       $out/lora_weight_grid.png"
