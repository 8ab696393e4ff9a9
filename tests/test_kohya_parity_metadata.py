"""LoRA metadata: every ss_* key kohya's train_network.py writes for SDXL network training, in
kohya's value formats (issue 15).

The key lists below were written from reading kohya's train_network.py (the `metadata` dict built
before training, the dataset branch with / without dataset_config, network args, model and VAE
hashes, and the three keys set in save_model); the expected values are worked out by hand.
"""
from __future__ import annotations

import hashlib
import json

import pytest
import torch

from data_fixtures import gradient_image, write_image
from tests.training_fixtures import run_training

KOHYA_BASE_KEYS = {
    "ss_session_id", "ss_training_started_at", "ss_output_name", "ss_learning_rate", "ss_text_encoder_lr", "ss_unet_lr",
    "ss_num_train_images", "ss_num_validation_images", "ss_num_reg_images", "ss_num_batches_per_epoch", "ss_num_epochs",
    "ss_gradient_checkpointing", "ss_gradient_accumulation_steps", "ss_max_train_steps", "ss_lr_warmup_steps",
    "ss_lr_scheduler", "ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_network_dropout",
    "ss_mixed_precision", "ss_full_fp16", "ss_v2", "ss_base_model_version", "ss_clip_skip", "ss_max_token_length",
    "ss_cache_latents", "ss_seed", "ss_lowram", "ss_noise_offset", "ss_multires_noise_iterations",
    "ss_multires_noise_discount", "ss_adaptive_noise_scale", "ss_zero_terminal_snr", "ss_training_comment",
    "ss_sd_scripts_commit_hash", "ss_optimizer", "ss_max_grad_norm", "ss_caption_dropout_rate",
    "ss_caption_dropout_every_n_epochs", "ss_caption_tag_dropout_rate", "ss_face_crop_aug_range",
    "ss_prior_loss_weight", "ss_min_snr_gamma", "ss_scale_weight_norms", "ss_ip_noise_gamma", "ss_debiased_estimation",
    "ss_noise_offset_random_strength", "ss_ip_noise_gamma_random_strength", "ss_loss_type", "ss_huber_schedule",
    "ss_huber_scale", "ss_huber_c", "ss_fp8_base", "ss_fp8_base_unet", "ss_validation_seed", "ss_validation_split",
    "ss_max_validation_steps", "ss_validate_every_n_epochs", "ss_validate_every_n_steps", "ss_resize_interpolation",
}
KOHYA_FLAT_DATASET_KEYS = {
    "ss_batch_size_per_device", "ss_total_batch_size", "ss_resolution", "ss_color_aug", "ss_flip_aug", "ss_random_crop",
    "ss_shuffle_caption", "ss_enable_bucket", "ss_bucket_no_upscale", "ss_min_bucket_reso", "ss_max_bucket_reso",
    "ss_keep_tokens", "ss_dataset_dirs", "ss_reg_dataset_dirs", "ss_tag_frequency", "ss_bucket_info",
}
KOHYA_CONFIG_DATASET_KEYS = {"ss_datasets", "ss_tag_frequency", "ss_dataset_dirs"}
KOHYA_MODEL_KEYS = {"ss_network_args", "ss_sd_model_hash", "ss_new_sd_model_hash", "ss_sd_model_name"}
KOHYA_SAVE_KEYS = {"ss_training_finished_at", "ss_steps", "ss_epoch"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_single_file):
    root = tmp_path_factory.mktemp("metadata_run")
    for name in ("a", "b", "c"):
        write_image(root / "train" / "10_ohwx_woman" / f"{name}.png", gradient_image(64, 64, seed=ord(name)))
    (root / "train" / "10_ohwx_woman" / "a.caption").write_text("ohwx woman, Red Dress", encoding="utf-8")
    write_image(root / "reg" / "1_woman" / "r.png", gradient_image(64, 64, seed=9))
    (root / "reg" / "1_woman" / "r.caption").write_text("woman", encoding="utf-8")
    path = run_training(root, tiny_single_file, root / "train", name="meta", reg_data_dir=str(root / "reg"),
                        max_train_steps=2, network_args=["conv_dim=4", "conv_alpha=1"], optimizer_args=["weight_decay=0.01"],
                        training_comment="first try", unet_lr=1e-4, text_encoder_lr=5e-5)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        return handle.metadata()


def test_every_kohya_key_is_written(trained):
    keys = {k for k in trained if k.startswith("ss_")}
    expected = KOHYA_BASE_KEYS | KOHYA_FLAT_DATASET_KEYS | KOHYA_MODEL_KEYS | KOHYA_SAVE_KEYS
    assert expected <= keys, sorted(expected - keys)
    assert not (keys & {"ss_datasets"})  # kohya writes ss_datasets only with dataset_config
    assert all(isinstance(v, str) for v in trained.values())


def test_kohya_value_formats(trained, tiny_single_file):
    m = trained
    # Python str() of each value, as kohya stringifies its dict
    assert (m["ss_v2"], m["ss_clip_skip"], m["ss_network_dropout"], m["ss_full_fp16"]) == ("False", "None", "None", "False")
    assert (m["ss_unet_lr"], m["ss_text_encoder_lr"], m["ss_learning_rate"]) == ("0.0001", "5e-05", "0.001")
    assert (m["ss_network_dim"], m["ss_network_alpha"], m["ss_seed"], m["ss_mixed_precision"]) == ("4", "2.0", "1234", "no")
    assert m["ss_resolution"] == "(64, 64)" and m["ss_training_comment"] == "first try"
    assert m["ss_base_model_version"] == "sdxl_base_v1-0" and m["ss_cache_latents"] == "True"
    assert m["ss_optimizer"] == "torch.optim.adamw.AdamW(weight_decay=0.01)"
    assert json.loads(m["ss_network_args"]) == {"conv_dim": "4", "conv_alpha": "1", "dropout": None}
    # 3 images x 10 repeats; the reg image (1 x 1) is cycled to as many samples: 60 per epoch, batch 2
    assert (m["ss_num_train_images"], m["ss_num_reg_images"], m["ss_num_validation_images"]) == ("30", "1", "0")
    assert (m["ss_num_batches_per_epoch"], m["ss_num_epochs"], m["ss_max_train_steps"], m["ss_steps"]) == ("30", "1", "2", "2")
    assert (m["ss_batch_size_per_device"], m["ss_total_batch_size"]) == ("2", "2")
    assert (m["ss_enable_bucket"], m["ss_bucket_no_upscale"], m["ss_min_bucket_reso"], m["ss_max_bucket_reso"]) == ("True", "False", "32", "128")
    assert json.loads(m["ss_dataset_dirs"]) == {"10_ohwx_woman": {"n_repeats": 10, "img_count": 3}}
    assert json.loads(m["ss_reg_dataset_dirs"]) == {"1_woman": {"n_repeats": 1, "img_count": 1}}
    # kohya's tag frequency: the raw captions (class tokens where there is none), split at ",", lower case
    assert json.loads(m["ss_tag_frequency"]) == {"10_ohwx_woman": {"ohwx woman": 1, "red dress": 1, "ohwx_woman": 2},
                                                 "1_woman": {"woman": 1}}
    # buckets of 64x64 area, steps 32, 32..128, sorted: (32,96) (32,128) (64,64) (96,32) (128,32): index 2
    assert json.loads(m["ss_bucket_info"]) == {"buckets": {"2": {"resolution": [64, 64], "count": 60}}, "mean_img_ar_error": 0.0}
    data = tiny_single_file.read_bytes()
    assert m["ss_sd_model_hash"] == hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    assert m["ss_new_sd_model_hash"] == hashlib.sha256(data).hexdigest()
    assert m["ss_sd_model_name"] == tiny_single_file.name
    assert m["ss_session_id"].isdigit() and float(m["ss_training_started_at"]) <= float(m["ss_training_finished_at"])
    assert m["ss_sd_scripts_commit_hash"] == "(unknown)" or len(m["ss_sd_scripts_commit_hash"]) == 40


def test_dataset_config_keys_and_no_metadata(tmp_path):
    from library.data.images import SkipLog
    from library.training.config.config_loader import resolve_config
    from library.training.config.dataset_config import dataset_specs
    from library.training.outputs.run_metadata import kohya_run_metadata
    from library.training.outputs.saving import NetworkSaver
    from library.training.inputs.train_items import build_items

    write_image(tmp_path / "imgs" / "x.png", gradient_image(96, 64))
    (tmp_path / "imgs" / "x.caption").write_text("a, b", encoding="utf-8")
    write_image(tmp_path / "other" / "y.png", gradient_image(64, 64))
    (tmp_path / "meta.json").write_text(json.dumps({"y": {"caption": "photo", "tags": "T1, t2"}}), encoding="utf-8")
    (tmp_path / "data.toml").write_text(
        '[general]\nresolution = "64,64"\n'
        '[[datasets]]\nenable_bucket = true\nmin_bucket_reso = 32\nmax_bucket_reso = 128\nbucket_reso_steps = 32\n'
        f'[[datasets.subsets]]\nimage_dir = "{tmp_path / "imgs"}"\nnum_repeats = 3\nclass_tokens = "sks"\n'
        f'[[datasets]]\nbatch_size = 2\n[[datasets.subsets]]\nimage_dir = "{tmp_path / "other"}"\nmetadata_file = "{tmp_path / "meta.json"}"\n',
        encoding="utf-8")
    args = resolve_config(["--dataset_config", str(tmp_path / "data.toml"), "--pretrained_model_name_or_path", "model.safetensors",
                           "--output_dir", "o", "--output_name", "n"]).args
    specs = dataset_specs(args)
    items = build_items(specs, SkipLog(), [])
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    meta = kohya_run_metadata(args, items=items, val_items=[], specs=specs, optimizer=optimizer, batches_per_epoch=4,
                              max_steps=8, epochs=2, total_batch_size=1, started_at=0.0)
    assert KOHYA_BASE_KEYS | KOHYA_CONFIG_DATASET_KEYS | {"ss_sd_model_name"} <= set(meta)
    assert not set(meta) & (KOHYA_FLAT_DATASET_KEYS - KOHYA_CONFIG_DATASET_KEYS)
    assert meta["ss_sd_model_name"] == "model.safetensors" and "ss_sd_model_hash" not in meta  # no such file
    assert meta["ss_optimizer"] == "torch.optim.sgd.SGD" and meta["ss_num_train_images"] == "4"
    first, second = json.loads(meta["ss_datasets"])
    assert first == {
        "is_dreambooth": True, "batch_size_per_device": 1, "num_train_images": 3, "num_reg_images": 0, "resolution": [64, 64],
        "enable_bucket": True, "min_bucket_reso": 32, "max_bucket_reso": 128, "tag_frequency": {"imgs": {"a": 1, "b": 1}},
        # 96x64 (ratio 1.5): nearest ratio among (32,96) (32,128) (64,64) (96,32) (128,32) is 64x64 (index 2),
        # 1 image x 3 repeats, |1 - 1.5| = 0.5
        "bucket_info": {"buckets": {"2": {"resolution": [64, 64], "count": 3}}, "mean_img_ar_error": 0.5},
        "resize_interpolation": None,
        "subsets": [{"img_count": 1, "num_repeats": 3, "color_aug": False, "flip_aug": False, "random_crop": False,
                     "shuffle_caption": False, "keep_tokens": 0, "keep_tokens_separator": "", "secondary_separator": None,
                     "enable_wildcard": False, "caption_prefix": None, "caption_suffix": None, "resize_interpolation": None,
                     "image_dir": "imgs", "class_tokens": "sks", "is_reg": False}],
    }
    assert second["is_dreambooth"] is False and second["bucket_info"] is None and second["batch_size_per_device"] == 2
    assert second["tag_frequency"] == {"meta.json": {"t1": 1, "t2": 1}}  # fine-tuning: the tags only
    assert second["subsets"][0]["metadata_file"] == "meta.json"
    assert json.loads(meta["ss_dataset_dirs"]) == {"imgs": {"n_repeats": 3, "img_count": 1}, "meta.json": {"n_repeats": 1, "img_count": 1}}

    args = args.replace(no_metadata=True)  # (the resolved config is read-only: a changed copy)
    saver = NetworkSaver(args, {"resolution": (64, 64), "max_train_steps": 8, "total_batch_size": 1}, 0.0)
    saver.run_metadata = {**meta, "ss_network_args": "{}"}
    kept = {k for k in saver.metadata(1, 8) if k.startswith("ss_")}
    assert kept == {"ss_v2", "ss_base_model_version", "ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_network_args"}
