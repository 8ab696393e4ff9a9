#!/usr/bin/env bash
# End-to-end demo on the toy world, offline, on a CPU (about five minutes): a tiny SDXL-architecture
# model pretrained here on coloured shapes, and a concept it has never seen (the trigger "zkz", a cyan
# shape). Model -> images with captions and tags -> trigger word -> metadata -> buckets + latents ->
# LoRA training (accelerate) with samples and TensorBoard logs -> a LoRA-weight comparison grid in
# which the concept appears as the weight rises (docs/toy_world.md).
# Usage: bash tools/quickstart.sh [OUTPUT_DIR]   (default: demo_output/)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-demo_output}"
mkdir -p "$out"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"  # tiny model: one thread is fastest

echo "== 1/7 Build the toy world: pretrain the tiny SDXL-architecture model on coloured shapes (reused when present)"
python tools/make_toy_world.py --output_dir "$out/toy_world"
model="$out/toy_world/toy_sdxl.safetensors"

echo "== 2/7 The concept's images, with WD14-style .txt tags (what the tagging step writes)"
python tools/make_demo_images.py --output_dir "$out/images" --toy_world "$out/toy_world"

echo "== 3/7 Trigger word first, and remove the tag that describes the concept itself (tag pollution)"
python finetune/edit_tags.py "$out/images" --add zkz --remove cyan --dedupe --frequency 8

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

echo "== 7/7 Compare LoRA weights 0 .. 1 (the tutorial's comparison) in one labelled grid: the shapes turn cyan"
python tools/sdxl_gen_img.py --ckpt "$model" --network_weights "$out/lora/zkz_demo.safetensors" \
  --grid_weights 0,0.2,0.4,0.6,0.8,1.0 --grid_y seed --grid_seeds 1000 1001 1002 \
  --prompt "zkz, simple background, grey background, no humans" \
  --W 64 --H 64 --steps 20 --sampler ddim --scale 5 --grid_file "$out/lora_weight_grid.png"

echo
echo "Artefacts:"
echo "  toy world:         $out/toy_world/  (toy_sdxl.safetensors, diffusers/, world.json, images)"
echo "  images + tags:     $out/images/  (with <image>_<W>x<H>_sdxl.npz latent caches)"
echo "  metadata:          $out/meta_clean.json, $out/meta_lat.json"
echo "  LoRA files:        $(ls "$out"/lora/*.safetensors | tr '\n' ' ')"
echo "  resumable states:  $(ls -d "$out"/lora/*-state | tr '\n' ' ')"
echo "  samples:           $out/lora/sample/"
echo "  TensorBoard logs:  $out/logs/  (tensorboard --logdir $out/logs)"
echo "  weight grid:       $out/lora_weight_grid.png"
