"""The seed tutorial's config trains end to end on the tiny model through the classic kohya flow:
captions -> merge_all_to_metadata -> prepare_buckets_latents -> sdxl_train_network (in_json)."""
from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from tests.training_fixtures import make_concept_images, write_config


@pytest.fixture(scope="module")
def seed_run(tiny_sdxl_dir, tmp_path_factory):
    from finetune.merge_all_to_metadata import main as merge_main
    from finetune.prepare_buckets_latents import main as buckets_main
    from sdxl_train_network import main as train_main

    root = tmp_path_factory.mktemp("seed_run")
    images = root / "train"
    make_concept_images(images, count=4, caption="catwomen, 1girl, black bodysuit, mask")
    for path in images.glob("*.png"):
        path.with_suffix(".txt").write_text("solo, looking at viewer", encoding="utf-8")
    model, vae = tiny_sdxl_dir / "sdxl_tiny.safetensors", tiny_sdxl_dir / "diffusers" / "vae"
    assert merge_main([str(images), str(root / "meta_clean.json")]) == 0
    assert buckets_main([str(images), str(root / "meta_clean.json"), str(root / "meta_lat.json"), str(model),
                         "--max_resolution", "64,64", "--min_bucket_reso", "32", "--max_bucket_reso", "128",
                         "--bucket_reso_steps", "32", "--vae", str(vae)]) == 0

    config = tomllib.loads(Path("tests/data/seed_tutorial_config.toml").read_text(encoding="utf-8"))
    config["model_arguments"].update(pretrained_model_name_or_path=str(model), vae=str(vae))
    config["dataset_arguments"].update(in_json=str(root / "meta_lat.json"), train_data_dir=str(images), resolution="64,64")
    config["training_arguments"].update(output_dir=str(root / "out"), max_train_epochs=2, train_batch_size=2)
    config["logging_arguments"].update(logging_dir=str(root / "logs"))
    config["optimizer_arguments"].update(lr_warmup_steps=2)
    path = write_config(root / "config_file.toml", config)
    assert train_main(["--config_file", str(path)]) == 0
    return root


def test_seed_config_writes_epoch_and_final_loras(seed_run):
    out = seed_run / "out"
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["sdxl_lora_WeThinkIn-000001.safetensors", "sdxl_lora_WeThinkIn.safetensors"]


def test_seed_config_lora_keys_dtype_and_metadata(seed_run):
    with safe_open(str(seed_run / "out" / "sdxl_lora_WeThinkIn.safetensors"), "pt") as handle:
        keys, metadata = list(handle.keys()), handle.metadata()
        dtypes = {handle.get_tensor(k).dtype for k in keys}
        conv = handle.get_tensor("lora_unet_input_blocks_1_0_in_layers_2.lora_down.weight")
    assert all(k.startswith("lora_unet_") for k in keys)  # network_train_unet_only
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_up.weight" in keys
    assert conv.shape == (32, 32, 3, 3)  # conv_dim 32 on a 32-channel 3x3 conv
    assert dtypes == {torch.float16}  # save_precision = "fp16"
    assert metadata["ss_network_dim"] == "32" and metadata["ss_network_alpha"] == "16.0"
    # kohya adds the network_dropout it passes on (None here) to the network args it records
    assert json.loads(metadata["ss_network_args"]) == {"conv_dim": "32", "conv_alpha": "16", "dropout": None}
    assert metadata["ss_base_model_version"] == "sdxl_base_v1-0"
    assert metadata["ss_optimizer"].startswith("transformers.optimization.Adafactor(")
    assert metadata["ss_num_train_images"] == "4" and metadata["ss_epoch"] == "2"
    assert int(metadata["ss_steps"]) == 2 * int(metadata["ss_num_batches_per_epoch"]) == int(metadata["ss_max_train_steps"])
    assert metadata["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora" and metadata["modelspec.resolution"] == "64x64"
    frequency = json.loads(metadata["ss_tag_frequency"])
    assert frequency == {"meta_lat.json": {"solo": 4, "looking at viewer": 4}}  # kohya: the metadata's tags only
    assert len(metadata["sshs_model_hash"]) == 64


def test_seed_config_logs_to_tensorboard(seed_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list((seed_run / "logs").rglob("events.out.tfevents.*"))
    assert events
    accumulator = EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    tags = set(accumulator.Tags()["scalars"])
    assert {"loss/current", "loss/average", "lr/unet", "loss/epoch_average"} <= tags
    assert len(accumulator.Scalars("loss/current")) == 6  # 2 epochs x 3 bucket batches
    warmup = [e.value for e in accumulator.Scalars("lr/unet")]
    assert warmup[0] == pytest.approx(5e-6) and warmup[-1] == pytest.approx(1e-5)  # constant_with_warmup, 2 steps


def test_seed_lora_loads_in_diffusers_with_every_key(seed_run, tiny_diffusers_dir):
    from diffusers import StableDiffusionXLPipeline
    from peft.tuners.lora import LoraLayer

    path = seed_run / "out" / "sdxl_lora_WeThinkIn.safetensors"
    pipe = StableDiffusionXLPipeline.from_pretrained(str(tiny_diffusers_dir), local_files_only=True)
    pipe.load_lora_weights(str(path))
    with safe_open(str(path), "pt") as handle:
        modules = {k.split(".")[0] for k in handle.keys()}
    assert sum(isinstance(m, LoraLayer) for m in pipe.unet.modules()) == len(modules)
