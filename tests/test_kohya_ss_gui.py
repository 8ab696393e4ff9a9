"""kohya_ss GUI JSON files (tests/data/kohya_ss_presets/: the GUI's SDXL presets and saved SDXL
LoRA configs, see the README there) load with `--config_file x.json` as the GUI's train button
turns them into sd-scripts options, train one step on the tiny model, and
tools/convert_kohya_ss_json.py writes the TOML that resolves to the same options."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from library.errors import UserError
from library.training.config.config_loader import resolve_config
from library.training.config.kohya_ss_gui import gui_options
from library.training.config.kohya_ss_network import network_settings
from tests.training_fixtures import lora_tensors, make_concept_images

PRESETS = Path(__file__).resolve().parent / "data" / "kohya_ss_presets"
FILES = sorted(p.name for p in PRESETS.glob("*.json"))
# size and length for a CPU test (the rule the seed tutorial's config follows): everything else as the file says
CPU_TEST = ["--resolution", "64,64", "--min_bucket_reso", "32", "--max_bucket_reso", "128", "--bucket_reso_steps", "32",
            "--max_train_epochs", "0", "--max_train_steps", "1", "--xformers", "false"]


@pytest.fixture(scope="module")
def machine(tmp_path_factory, tiny_single_file):
    root = tmp_path_factory.mktemp("kohya_ss")
    make_concept_images(root / "train" / "2_ohwx woman", count=2, caption_extension=".txt", caption="ohwx woman, smile",
                        sizes=[(64, 64)])
    return {"root": root, "model": tiny_single_file}


def localised(name: str, machine: dict, out: Path, **changes) -> Path:
    """The file with this machine's paths (the only change a user makes)."""
    out.mkdir(parents=True, exist_ok=True)
    data = json.loads((PRESETS / name).read_text(encoding="utf-8"))
    data.update(pretrained_model_name_or_path=str(machine["model"]), train_data_dir=str(machine["root"] / "train"),
                output_dir=str(out / "out"), output_name="gui_lora", logging_dir="", **changes)
    target = out / name
    target.write_text(json.dumps(data), encoding="utf-8")
    return target


def run_main(*argv) -> str:
    from sdxl_train_network import main

    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main(list(argv)) == 0
    return stdout.getvalue()


def test_the_corpus_holds_every_sdxl_preset_of_the_gui():
    presets = [name for name in FILES if not name.startswith("saved ")]
    assert len(presets) == 19 and "SDXL - LoKR v1.0.json" in presets and "locon-dadaptation-sdxl.json" in presets
    readme = (PRESETS / "README.md").read_text()
    assert "bmaltais/kohya_ss" in readme and "45088f04af78e11cec5407ff4652ea3ed2c14422" in readme


def machine_changes(name: str, machine: dict, tmp_path: Path) -> dict:
    """Beyond paths: the LoRA a file continues from, and wandb logging where wandb is not installed."""
    import importlib.util

    data = json.loads((PRESETS / name).read_text(encoding="utf-8"))
    changes = {}
    if data.get("lora_network_weights") or data.get("network_weights"):  # phase 2 continues phase 1's LoRA
        phase1 = localised("SDXL - LoRA finetuning phase 1_v1.1.json", machine, tmp_path / "phase1")
        run_main("--config_file", str(phase1), *CPU_TEST)
        changes["lora_network_weights"] = str(tmp_path / "phase1" / "out" / "gui_lora.safetensors")
    if data.get("log_with") == "wandb" and importlib.util.find_spec("wandb") is None:
        changes["log_with"] = ""  # kohya needs the wandb package for it too
    return changes


@pytest.mark.parametrize("name", FILES)
def test_gui_file_trains_one_step(name, machine, tmp_path):
    config = localised(name, machine, tmp_path, **machine_changes(name, machine, tmp_path))
    out = run_main("--config_file", str(config), *CPU_TEST)
    lora = tmp_path / "out" / "gui_lora.safetensors"
    tensors = lora_tensors(lora)
    assert tensors and "training 1 steps" in out, out[-2000:]
    module = resolve_config(["--config_file", str(config)]).args.network_module
    suffixes = {key.rsplit(".", 2)[-2] if key.endswith(".weight") else key.rsplit(".", 1)[-1] for key in tensors}
    expected = {"networks.lora": {"lora_up", "lora_down", "alpha"}}.get(module)
    assert expected is None or suffixes == expected, suffixes


# What the GUI's train button passes to sd-scripts for each file, worked out by hand from its code.
EXPECTED = {
    "SDXL - LoKR v1.0.json": dict(
        network_module="lycoris.kohya", optimizer_type="Prodigy", learning_rate=1.0, text_encoder_lr=[1.0, 1.0], unet_lr=1.0,
        network_args=["preset=full", "conv_dim=64", "conv_alpha=64", "use_tucker=False", "rank_dropout=0.1", "bypass_mode=False",
                      "dora_wd=False", "module_dropout=0.1", "factor=-1", "use_cp=True", "use_scalar=False",
                      "decompose_both=False", "rank_dropout_scale=False", "algo=lokr", "train_norm=False"],
        # noise_offset_type "Multires": the multires noise, not the 0.0357 offset
        multires_noise_iterations=8, multires_noise_discount=0.2, noise_offset=None, adaptive_noise_scale=None,
        seed=12345, max_train_epochs=None, max_train_steps=1600,  # no max_train_steps key: the GUI's default 1600
        min_bucket_reso=256, max_bucket_reso=2048, resolution=(1024, 1024), xformers=True, no_half_vae=True,
        mixed_precision="bf16", min_snr_gamma=10.0, max_timestep=1000, min_timestep=None, train_batch_size=8,
        gradient_accumulation_steps=1, network_train_unet_only=False, max_grad_norm=1.0, caption_extension=".txt"),
    "SDXL - LoRA AI_characters standard v1.1.json": dict(
        network_module="networks.lora", network_args=[], network_dim=32, network_alpha=32.0, optimizer_type="AdamW",
        max_train_epochs=50, seed=None, caption_dropout_rate=0.05, lr_scheduler="constant", lr_warmup_steps=0,
        save_every_n_epochs=1, keep_tokens=0, max_token_length=75, text_encoder_lr=[3e-05, 3e-05], mixed_precision="fp16"),
    "SDXL - LoRA kudou-reira dadaptadam v1.0.json": dict(
        optimizer_type="DAdaptAdam", optimizer_args=["decouple=True", "weight_decay=0.2", "betas=0.9,0.99", "growth_rate=1.02"],
        lr_warmup_steps=0.05, network_train_unet_only=True),  # lr_warmup 5 (%) -> 0.05; --network_train_unet_only
    "SDXL - LoRA kudou-reira prodigy v4.0.json": dict(
        lr_scheduler_type="CosineAnnealingLR", lr_scheduler_args=["T_max=30"], network_train_unet_only=True),
    "SDXL - edgLoRAXL.json": dict(max_grad_norm=0.0),  # --max_grad_norm=0 in additional_parameters
    "locon-dadaptation-sdxl.json": dict(
        text_encoder_lr=None, unet_lr=4e-07, network_train_unet_only=True,  # text_encoder_lr 0: the UNet only
        lr_warmup_steps=0.08, min_bucket_reso=256, max_bucket_reso=2048),
    "SDXL - LoRA aitrepreneur clothing v1.0.json": dict(max_train_epochs=15),  # epoch 15, no max_train_* given
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_gui_file_resolves_to_what_the_gui_passes(name):
    args = resolve_config(["--config_file", str(PRESETS / name)]).args
    for key, value in EXPECTED[name].items():
        assert getattr(args, key) == value, (key, getattr(args, key), value)


def test_strings_for_numbers_and_empty_strings_for_unset():
    options, _ = gui_options({"LoRA_type": "Standard", "max_train_epochs": "", "max_train_steps": "320", "seed": "",
                              "gradient_accumulation_steps": "2", "keep_tokens": "1", "max_token_length": "225",
                              "learning_rate": "0.0004", "network_dim": 16, "lr_warmup": "", "epoch": "3"}, "x.json:", [])
    assert options["max_train_steps"] == 320 and "max_train_epochs" not in options and "seed" not in options
    assert (options["gradient_accumulation_steps"], options["keep_tokens"], options["max_token_length"]) == (2, 1, 225)
    assert options["learning_rate"] == 0.0004 and "lr_warmup_steps" not in options


def test_epoch_becomes_max_train_epochs_and_warmup_percent_a_fraction():
    notices = []
    options, _ = gui_options({"epoch": 7, "max_train_steps": "", "lr_warmup": 10}, "x.json:", notices)
    assert options["max_train_epochs"] == 7 and "max_train_steps" not in options and options["lr_warmup_steps"] == 0.1
    assert any("epoch = 7: trains 7 epoch(s)" in n for n in notices)
    # with a dataset_config and a step count, the GUI converts the percentage to steps itself
    options, _ = gui_options({"dataset_config": "d.toml", "max_train_steps": 300, "lr_warmup": 10}, "x.json:", [])
    assert options["lr_warmup_steps"] == 30
    notices = []
    options, _ = gui_options({"dataset_config": "d.toml", "max_train_steps": 0, "epoch": 4}, "x.json:", notices)
    assert "max_train_steps" not in options and "max_train_epochs" not in options
    assert any("trains its default 1600 steps" in n for n in notices)


@pytest.mark.parametrize("lora_type, module, args", [
    ("Kohya LoCon", "networks.lora", ["conv_dim=8", "conv_alpha=4", "rank_dropout=0.1"]),
    ("LoRA-FA", "networks.lora_fa", ["rank_dropout=0.1"]),
    ("Kohya DyLoRA", "networks.dylora", ["conv_dim=8", "conv_alpha=4", "rank_dropout=0.1", "unit=4"]),
    ("LyCORIS/iA3", "lycoris.kohya", ["preset=attn-only", "conv_dim=8", "conv_alpha=4", "train_on_input=True", "algo=ia3"]),
    ("LyCORIS/Diag-OFT", "lycoris.kohya", ["preset=attn-only", "conv_dim=8", "conv_alpha=4", "module_dropout=0",
                                          "use_tucker=False", "rank_dropout=0.1", "rank_dropout_scale=False", "constraint=0.0",
                                          "rescaled=False", "algo=diag-oft", "train_norm=False"]),
])
def test_lora_types_give_the_guis_network_args(lora_type, module, args):
    gui = {"LoRA_type": lora_type, "conv_dim": 8, "conv_alpha": 4, "rank_dropout": 0.1, "unit": 4, "LyCORIS_preset": "attn-only"}
    from library.training.config.kohya_ss_network import KNOB_DEFAULTS

    assert network_settings({**KNOB_DEFAULTS, **gui}, "x.json:") == (module, args)


def test_launcher_keys_and_unused_keys_get_one_notice_each():
    notices = []
    gui_options({"num_processes": 2, "gpu_ids": "0,1", "num_machines": 1, "discrete_flow_shift": 3.0, "model_list": "custom",
                 "t5xxl": ""}, "x.json:", notices)
    assert any("num_processes = 2, gpu_ids = '0,1': settings of accelerate launch" in n for n in notices)
    assert any("not passed to sd-scripts by the kohya_ss GUI for an SDXL LoRA" in n and "discrete_flow_shift = 3.0" in n
               and "model_list" not in n and "t5xxl" not in n for n in notices)


@pytest.mark.parametrize("data, message", [
    ({"sdxl": False}, r"x\.json: sdxl = false: the kohya_ss GUI would train SD 1\.x/2\.x"),
    ({"flux1_checkbox": True}, r"x\.json: flux1_checkbox = true: this GUI file trains another model"),
    ({"LoRA_type": "Kohya LoHa"}, r"LoRA_type = 'Kohya LoHa' .* use LoRA_type = 'LyCORIS/LoHa'"),
    ({"LoRA_type": "Flux1"}, r"LoRA_type = 'Flux1' is a LoRA for another model"),
])
def test_files_for_other_models_are_refused_in_one_line(data, message):
    with pytest.raises(UserError, match=message):
        gui_options(data, "x.json:", [])


def test_additional_parameters_override_and_unknown_ones_stop(machine, tmp_path):
    config = localised("SDXL - LoRA AI_Now ADamW v1.0.json", machine, tmp_path,
                       additional_parameters='--max_grad_norm=0 --network_train_unet_only --min_snr_gamma "3"')
    resolved = resolve_config(["--config_file", str(config), "--min_snr_gamma", "4"])
    assert (resolved.args.max_grad_norm, resolved.args.network_train_unet_only) == (0.0, True)
    assert resolved.args.min_snr_gamma == 4.0  # the real command line still wins
    assert any("additional_parameters read as command-line options" in n for n in resolved.notices)
    config = localised("SDXL - LoRA AI_Now ADamW v1.0.json", machine, tmp_path, additional_parameters="--not_an_option 3")
    with pytest.raises(UserError, match=r"additional_parameters: --not_an_option 3 is not an option of sdxl_train_network\.py"):
        resolve_config(["--config_file", str(config)])


def test_sample_prompt_text_is_written_where_the_gui_writes_it(machine, tmp_path):
    config = localised("SDXL - LoRA AI_Now ADamW v1.0.json", machine, tmp_path, sample_prompts="ohwx woman --w 64 --h 64",
                       sample_every_n_steps=1)
    args = resolve_config(["--config_file", str(config)]).args
    assert args.sample_prompts == str(tmp_path / "out" / "sample" / "prompt.txt")
    assert Path(args.sample_prompts).read_text() == "ohwx woman --w 64 --h 64"


@pytest.mark.parametrize("name", FILES)
def test_converter_writes_a_toml_with_the_same_options(name, machine, tmp_path):
    from tools.convert_kohya_ss_json import main as convert

    config = localised(name, machine, tmp_path)
    target = tmp_path / "converted.toml"
    with contextlib.redirect_stdout(io.StringIO()):
        assert convert([str(config), "--output", str(target)]) == 0
    from_json = vars(resolve_config(["--config_file", str(config)]).args)
    from_toml = vars(resolve_config(["--config_file", str(target)]).args)
    from_json.pop("config_file"), from_toml.pop("config_file")
    assert from_toml == from_json
    assert target.read_text().startswith("# converted from")
    with pytest.raises(UserError, match="exists"):
        convert([str(config), "--output", str(target)])


@pytest.mark.parametrize("lora_type", ["Standard", "Kohya LoCon", "LoRA-FA", "Kohya DyLoRA", "LyCORIS/LoCon", "LyCORIS/LoHa",
                                       "LyCORIS/LoKr", "LyCORIS/iA3", "LyCORIS/DyLoRA", "LyCORIS/GLoRA", "LyCORIS/Diag-OFT",
                                       "LyCORIS/BOFT", "LyCORIS/Native Fine-Tuning"])
def test_every_sdxl_lora_type_of_the_gui_builds_its_network(lora_type, tiny_sdxl):
    """The GUI's network_args for each type are accepted by the module they go to (iA3's
    train_on_input included, which LyCORIS does not read)."""
    from library.lora.network_modules import import_network_module

    options, _ = gui_options({"LoRA_type": lora_type, "network_dim": 8, "network_alpha": 4, "conv_dim": 4, "conv_alpha": 2,
                              "unit": 2, "LyCORIS_preset": "full"}, "x.json:", [])
    kwargs = dict(item.split("=", 1) for item in options["network_args"])
    module = import_network_module(options["network_module"])
    network = module.create_network(1.0, 8, 4, tiny_sdxl.vae, tiny_sdxl.text_encoders, tiny_sdxl.unet, **kwargs)
    network.apply_to(tiny_sdxl.text_encoders, tiny_sdxl.unet, True, True)
    from library.training.network_setup import optimizer_param_groups

    prepared = optimizer_param_groups(network, [1e-4, 1e-4], 1e-4, 1e-4, [])
    groups = prepared[0] if isinstance(prepared, tuple) else prepared
    assert sum(p.numel() for group in groups for p in group["params"]) > 0
