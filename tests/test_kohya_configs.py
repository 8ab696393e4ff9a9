"""Published kohya SDXL LoRA configs (tests/data/kohya_configs/, each file's first line names its
source) validate through the real `--print_config` path with only their machine paths changed,
and resolve to the values they were written with. A likely typo still stops; strict_config makes
every unknown key an error."""
from __future__ import annotations

import contextlib
import io
import json
import tomllib
from pathlib import Path

import pytest
import toml

from library.errors import UserError
from library.training.config.config_loader import resolve_config
from tests.training_fixtures import make_concept_images

CORPUS = Path(__file__).resolve().parent / "data" / "kohya_configs"
TRAINING = sorted(p.name for p in CORPUS.glob("*.toml") if not p.name.endswith(".dataset.toml"))
DATASETS = sorted(p.name for p in CORPUS.glob("*.dataset.toml"))
# the kohya_ss GUI passed these on the command line next to the issue's config file
GUI_COMMAND_LINE = {"issue_bmaltais_kohya_ss_1641.toml": ["--resolution", "1024,1024"]}
# kohya refuses these too (sdxl_train_network's assert_extra_args), with the same reason
REFUSED_BY_KOHYA = {"NurlanBoranbay_Fine-tuning-diffusion-model-with-LoRA_training_config.toml":
                    r"cache_text_encoder_outputs needs network_train_unet_only = true"}


def test_corpus_is_large_and_every_file_names_its_source():
    assert len(TRAINING) - len(REFUSED_BY_KOHYA) >= 15 and len(DATASETS) >= 2
    for name in TRAINING + DATASETS:
        first = (CORPUS / name).read_text(encoding="utf-8").splitlines()[0]
        assert first.startswith("# source: https://github.com/"), name


@pytest.fixture(scope="module")
def machine(tmp_path_factory, tiny_single_file):
    """This machine's stand-ins for the configs' paths: the tiny model, a DreamBooth folder (captions
    as .txt and .caption), a metadata JSON, masks, a prompt file."""
    root = tmp_path_factory.mktemp("kohya_corpus")
    images = make_concept_images(root / "train" / "2_ohwx woman", count=2, caption_extension=".txt", caption="ohwx, 1girl",
                                 sizes=[(64, 64)])
    for image in images:
        image.with_suffix(".caption").write_text("ohwx, 1girl", encoding="utf-8")
    (root / "meta_lat.json").write_text(json.dumps({p.stem: {"caption": "ohwx, 1girl", "train_resolution": [64, 64]}
                                                    for p in images}), encoding="utf-8")
    (root / "masks").mkdir()
    for image in images:
        (root / "masks" / image.name).write_bytes(image.read_bytes())
    (root / "prompts.txt").write_text("ohwx --w 64 --h 64 --s 2\n", encoding="utf-8")
    return {"model": tiny_single_file, "root": root, "train": root / "train", "images": root / "train" / "2_ohwx woman",
            "meta": root / "meta_lat.json", "masks": root / "masks", "prompts": root / "prompts.txt"}


def localised(name: str, machine: dict, out: Path) -> Path:
    """The config with its machine paths pointed at `machine`; every other key and table untouched."""
    data = tomllib.loads((CORPUS / name).read_text(encoding="utf-8"))
    uses_metadata = any("in_json" in t for t in [data, *[v for v in data.values() if isinstance(v, dict)]])
    paths = {
        "pretrained_model_name_or_path": str(machine["model"]),
        "train_data_dir": str(machine["images"] if uses_metadata else machine["train"]),
        "in_json": str(machine["meta"]),
        "output_dir": str(out / "output"),
        "logging_dir": str(out / "logs"),
        "sample_prompts": str(machine["prompts"]),
        "tokenizer_cache_dir": str(machine["model"].parent / "diffusers"),
        "dataset_config": str(localised_dataset(paired_dataset(name), machine, out)),
    }

    # services leave the image folder empty and pass it at run time; optional paths stay unset when empty
    always = ("pretrained_model_name_or_path", "train_data_dir")

    def visit(table: dict):
        for key, value in table.items():
            if isinstance(value, dict):
                visit(value)
            elif key in paths and (value not in ("", None) or key in always):
                table[key] = paths[key]

    visit(data)
    keys = set(data) | {k for v in data.values() if isinstance(v, dict) for k in v}
    for key in always:  # a config written for a GUI that passes these on the command line
        if key not in keys and "dataset_config" not in keys:
            data[key] = paths[key]
    target = out / name
    target.write_text(toml.dumps(data), encoding="utf-8")
    return target


def paired_dataset(name: str) -> str:
    """The dataset config published next to a training config (same repository), else the first."""
    owner = name.split("_")[0]
    return next((d for d in DATASETS if d.split("_")[0] == owner), DATASETS[0])


def localised_dataset(name: str, machine: dict, out: Path) -> Path:
    data = tomllib.loads((CORPUS / name).read_text(encoding="utf-8"))
    for dataset in data["datasets"]:
        for subset in dataset["subsets"]:
            subset["image_dir"] = str(machine["images"])
            if "conditioning_data_dir" in subset:
                subset["conditioning_data_dir"] = str(machine["masks"])
    target = out / name
    target.write_text(toml.dumps(data), encoding="utf-8")
    return target


def print_config(config: Path, *extra: str) -> str:
    from sdxl_train_network import main

    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main(["--config_file", str(config), "--print_config", *extra]) == 0
    return stdout.getvalue()


@pytest.mark.parametrize("name", TRAINING)
def test_published_config_validates_with_only_paths_changed(name, machine, tmp_path):
    config = localised(name, machine, tmp_path)
    if name in REFUSED_BY_KOHYA:
        with pytest.raises(UserError, match=REFUSED_BY_KOHYA[name]):
            print_config(config)
        return
    out = print_config(config, *GUI_COMMAND_LINE.get(name, []))
    assert "images: 2 training" in out and "total steps:" in out, out


# A few values per file, as each config wrote them (after kohya's own readings).
EXPECTED = {
    "qaneel_kohya-trainer_XL_LoRA_config.toml": dict(
        optimizer_type="AdaFactor", learning_rate=1e-5, network_args=["conv_dim=32", "conv_alpha=16"], max_token_length=225,
        network_train_unet_only=True, cache_text_encoder_outputs=True, max_grad_norm=0.0, max_train_epochs=10),
    "rayonlabs_GOD_base_diffusion_sdxl.toml": dict(
        network_dim=16, network_alpha=16.0, huber_c=0.2, bucket_reso_steps=32, max_train_steps=1600, max_train_epochs=None,
        text_encoder_lr=1e-5, scale_weight_norms=5.0, huggingface_repo_id=None, train_data_dir=None),
    "PhoenixBeaudry_Gradients_base_diffusion_sdxl.toml": dict(
        max_train_epochs=120, loss_type="l1", network_dropout=0.05, unet_lr=3e-4, optimizer_args=["weight_decay=0.01"],
        lr_scheduler="cosine"),
    "mattdev071_gradient-advanced_base_diffusion_sdxl.toml": dict(
        train_batch_size=32, gradient_accumulation_steps=8, learning_rate=5e-5, optimizer_type="AdamW", optimizer_args=[]),
    "tarabukinivan_tur3_base_diffusion_sdxl.toml": dict(
        resolution=(896, 896), dynamo_backend="inductor", full_bf16=True, max_timestep=600, noise_offset=0.15, seed=42,
        network_args=["dropout=0.05", "rank_dropout=0.05", "module_dropout=0.0", "algo=lora"], lr_scheduler="cosine_with_restarts"),
    "skrd3_training-repo_base_diffusion_sdxl.toml": dict(
        optimizer_type="Prodigy", max_token_length=225, unet_lr=1.0, multires_noise_discount=0.3,
        optimizer_args=["decouple=True", "weight_decay=0.01", "d_coef=0.8", "use_bias_correction=True", "safeguard_warmup=True"]),
    "nntoan209_god-tournament-image_base_diffusion_sdxl.toml": dict(
        max_token_length=75, optimizer_type="prodigy", network_args=["conv_dim=4", "conv_alpha=4", "dropout=null"],
        max_train_epochs=20, no_metadata=True, max_bucket_reso=1024),
    "gcantwell3472-x_latent404_base_diffusion_sdxl.toml": dict(
        optimizer_type="Lion", optimizer_args=["weight_decay=0.01", "betas=(0.9,0.99)"], max_train_steps=850, max_token_length=75,
        lr_scheduler_num_cycles=3, min_snr_gamma=7.0),
    "omegamediareport_tourn85_base_diffusion_sdxl.toml": dict(
        resolution=(1024, 1024), gradient_accumulation_steps=4, text_encoder_lr=3.25e-6, huber_c=0.05),
    "2kdftv_NyaR5_IMG_base_diffusion_sdxl.toml": dict(max_train_steps=1, dataset_repeats=1, optimizer_type="AdamW8Bit"),
    "DespiteDeath1_god-base-tournament_base_diffusion_sdxl.toml": dict(network_dim=64, network_alpha=128.0, max_train_steps=2500),
    "l1934332574-maker_Kohya-LoRA-Tool_style_lora_gui.toml": dict(
        max_train_steps=1600, max_train_epochs=8, network_dim=16, network_alpha=8.0, min_bucket_reso=512, seed=1234,
        save_every_n_steps=0, cache_text_encoder_outputs=False),
    "NurlanBoranbay_Fine-tuning-diffusion-model-with-LoRA_training_config.toml": dict(
        adaptive_noise_scale=0.00357, multires_noise_iterations=6, sample_every_n_epochs=4, keep_tokens=1, shuffle_caption=True),
    "issue_bmaltais_kohya_ss_1641.toml": dict(
        network_module="locon.locon_kohya", network_args=["conv_dim=64", "conv_alpha=32"], optimizer_args=["weight_decay=0.6"],
        prior_loss_weight=1.0, train_batch_size=6, sample_sampler="ddim"),
    "issue_bmaltais_kohya_ss_3164.toml": dict(
        optimizer_type="Adafactor", lr_scheduler_num_cycles=3, max_train_epochs=0, max_train_steps=500, max_token_length=225),
    "Akegarasu_lora-scripts_default.toml": dict(
        resolution=(512, 512), text_encoder_lr=1e-5, unet_lr=1e-4, save_last_n_epochs=499, seed=1337, reg_data_dir=None,
        lr_scheduler_num_cycles=1),
}


def test_every_corpus_file_has_expected_values():
    assert set(EXPECTED) == set(TRAINING)


@pytest.mark.parametrize("name", TRAINING)
def test_published_config_resolves_to_its_values(name):
    args = resolve_config(["--config_file", str(CORPUS / name)]).args
    for key, value in EXPECTED[name].items():
        assert getattr(args, key) == value, (key, getattr(args, key), value)


def test_gui_keys_are_ignored_with_one_notice_that_explains_them():
    resolved = resolve_config(["--config_file", str(CORPUS / "mattdev071_gradient-advanced_base_diffusion_sdxl.toml")])
    ignored = [n for n in resolved.notices if "ignored 3 key(s) that kohya's sdxl_train_network also ignores" in n]
    assert len(ignored) == 1
    assert "epoch (kohya_ss GUI's epoch count" in ignored[0] and "set max_train_epochs = 20" in ignored[0]
    assert 'optimizer_args = ["weight_decay=0.1"]' in ignored[0] and "noise_offset_type" in ignored[0]
    # inert values: no notice for them at all
    assert not [n for n in resolved.notices if "huggingface" in n or "dynamo_backend" in n or "async_upload" in n]


@pytest.mark.parametrize("name", DATASETS)
def test_published_dataset_config_validates(name, machine, tmp_path):
    training = tmp_path / "t.toml"
    training.write_text(toml.dumps({
        "pretrained_model_name_or_path": str(machine["model"]), "dataset_config": str(localised_dataset(name, machine, tmp_path)),
        "masked_loss": "conditioning_data_dir" in (CORPUS / name).read_text(), "network_module": "networks.lora"}))
    out = print_config(training)
    assert "images: 2 training" in out and "2 images x" in out


def test_likely_typo_still_stops_before_the_model_loads(machine, tmp_path):
    config = tomllib.loads(localised("rayonlabs_GOD_base_diffusion_sdxl.toml", machine, tmp_path).read_text())
    config["netwrok_dim"] = 8
    path = tmp_path / "typo.toml"
    path.write_text(toml.dumps(config))
    with pytest.raises(UserError, match=r"typo\.toml: netwrok_dim: unknown option; did you mean 'network_dim'\?"):
        print_config(path)


def test_strict_config_rejects_an_ignored_key(machine, tmp_path):
    path = localised("rayonlabs_GOD_base_diffusion_sdxl.toml", machine, tmp_path)
    with pytest.raises(UserError, match=r"epoch: unknown option \(kohya_ss GUI's epoch count.*strict_config = true; 2 unknown"):
        print_config(path, "--strict_config")
    config = tomllib.loads(path.read_text())
    config["strict_config"] = True
    path.write_text(toml.dumps(config))
    with pytest.raises(UserError, match=r"strict_config = true"):
        print_config(path)


def test_a_config_with_every_option_issue_15_lists_validates(machine, tmp_path):
    """conditioning_data_dir, dataset network_multiplier, cache_info, custom_attributes, the
    metadata_* and DeepSpeed options, scheduler names and classes, schedule-free wrapping."""
    dataset = tmp_path / "dataset.toml"
    dataset.write_text(toml.dumps({"datasets": [{
        "resolution": 64, "network_multiplier": 0.8,
        "subsets": [{"image_dir": str(machine["images"]), "conditioning_data_dir": str(machine["masks"]), "cache_info": True,
                     "custom_attributes": {"diff_output_preservation": False}}]}]}))
    config = tmp_path / "every.toml"
    config.write_text(toml.dumps({
        "model": {"pretrained_model_name_or_path": str(machine["model"])},
        "dataset": {"dataset_config": str(dataset), "cache_info": True},
        "train": {"masked_loss": True, "deepspeed": True, "zero_stage": 3, "offload_optimizer_device": "cpu",
                  "offload_optimizer_nvme_path": "/nvme", "offload_param_device": "cpu", "offload_param_nvme_path": "/nvme",
                  "zero3_init_flag": False, "zero3_save_16bit_model": True, "fp16_master_weights_and_gradients": False,
                  "dynamo_backend": "no", "async_upload": True, "huggingface_repo_id": "", "huggingface_token": ""},
        "optimizer": {"optimizer_type": "AdamW", "optimizer_schedulefree_wrapper": True,
                      "schedulefree_wrapper_args": ["momentum=0.9"], "lr_scheduler": "cosine_warmup_with_min_lr",
                      "lr_scheduler_type": "", "lr_scheduler_args": []},
        "metadata": {"metadata_usage_hint": "say ohwx", "metadata_merged_from": "a", "metadata_preprocessor": "none",
                     "metadata_is_negative_embedding": "false"},
        "network": {"network_module": "networks.lora", "network_dim": 4},
    }))
    from library.training.config.config_loader import resolve_config as resolve

    resolved = resolve(["--config_file", str(config)])
    assert resolved.args.zero_stage == 3 and resolved.args.metadata_usage_hint == "say ohwx"
    assert any("deepspeed, zero_stage" in n and "DDP" in n for n in resolved.notices)
    out = print_config(config)
    assert "images: 2 training" in out and "network_multiplier: each dataset trains" in out
