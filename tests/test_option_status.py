"""The options table never claims support the code refuses, and never hides a refusal.

For every option documented as supported (and each of its accepted choices), ignored or inert, a
config setting it passes everything that runs before the model loads (the `--print_config`
path: resolution, dataset scan, combination checks, preflight). For every option documented as
not yet / not offered, and every refused choice, that same path refuses it. docs/options.md is
generated from the same table (tests/test_docs.py), so the documented status is what the code does.
"""
from __future__ import annotations

import json

import pytest

from library.errors import UserError
from library.training.config import option_types as T
from library.training.config.config_loader import resolve_config
from library.training.config.options import IGNORED, INERT, OPTIONS, PENDING, SUPPORTED, UNSUPPORTED
from library.training.loop import Trainer
from tests.training_fixtures import make_concept_images


@pytest.fixture(scope="module")
def machine(tmp_path_factory, tiny_single_file):
    root = tmp_path_factory.mktemp("option_status")
    images = make_concept_images(root / "train" / "1_ohwx", count=4, caption_extension=".caption", sizes=[(64, 64)])
    (root / "meta.json").write_text(json.dumps({p.stem: {"caption": "ohwx"} for p in images}))
    (root / "masks").mkdir()
    for image in images:
        (root / "masks" / image.name).write_bytes(image.read_bytes())
    (root / "prompts.txt").write_text("ohwx --w 64 --h 64\n")
    dataset = root / "dataset.toml"
    dataset.write_text(f'[[datasets]]\nresolution = 64\n[[datasets.subsets]]\nimage_dir = "{images[0].parent}"\n')
    base = ["--pretrained_model_name_or_path", str(tiny_single_file), "--train_data_dir", str(root / "train"),
            "--resolution", "64,64", "--output_dir", str(root / "out"), "--network_module", "networks.lora"]
    return {"base": base, "root": root, "images": images[0].parent, "model": tiny_single_file, "meta": root / "meta.json",
            "masks": root / "masks", "prompts": root / "prompts.txt", "dataset": dataset}


def sample_values(option, machine) -> list[str | list[str]]:
    """Command-line values to try for `option`: every accepted non-default choice, else one value."""
    if option.choices:
        return [str(c) for c in option.choices if c != option.default]
    special = {
        "vae": str(machine["model"].parent / "diffusers" / "vae"), "network_weights": str(machine["model"]),
        "in_json": str(machine["meta"]), "sample_prompts": str(machine["prompts"]), "dataset_config": str(machine["dataset"]),
        "conditioning_data_dir": str(machine["masks"]), "metadata_thumbnail": str(machine["images"] / "img0.png"),
        "max_token_length": "150", "max_timestep": "500", "min_timestep": "10", "validation_split": "0.25",
        "lr_scheduler": "cosine", "optimizer_type": "AdamW", "token_abstraction": "TOK", "train_text_encoder_ti_frac": "0.5",
        "network_args": ["conv_dim=4"], "optimizer_args": ["weight_decay=0.01"], "lr_scheduler_args": ["T_max=10"],
        "schedulefree_wrapper_args": ["momentum=0.9"], "base_weights": [str(machine["model"])], "base_weights_multiplier": ["0.5"],
        "face_crop_aug_range": "2.0,4.0", "resolution": "64,64", "tokenizer_cache_dir": str(machine["model"].parent / "diffusers"),
        "dataset_repeats": "2", "caption_extension": ".caption", "caption_extention": ".caption",
        "train_data_dir": str(machine["root"] / "train"), "reg_data_dir": str(machine["root"] / "train"),
    }
    if option.name in special:
        value = special[option.name]
        return [value]
    by_type = {T.parse_bool: "true", T.parse_int: "2", T.parse_float: "0.5", T.parse_int_or_float: "2",
               T.parse_float_or_float_list: "0.5", T.parse_str_list: ["key=1"], T.parse_str: "x"}
    return [by_type[option.parse]]


# Options that only make sense together with others (as kohya requires too).
COMPANIONS = {
    "cache_text_encoder_outputs": ["--network_train_unet_only"],
    "enable_bucket": ["--min_bucket_reso", "32", "--max_bucket_reso", "128", "--bucket_reso_steps", "32"],
    "adaptive_noise_scale": ["--noise_offset", "0.05"],
    "scale_v_pred_loss_like_noise_pred": ["--v_parameterization"],
    "cache_text_encoder_outputs_to_disk": ["--network_train_unet_only"],
    "train_text_encoder_ti": ["--network_train_unet_only"],
    "full_fp16": ["--mixed_precision", "fp16"],
    "full_bf16": ["--mixed_precision", "bf16"],
    "fp8_base": ["--mixed_precision", "bf16"],
    "fp8_base_unet": ["--mixed_precision", "bf16"],
    "masked_loss": ["--alpha_mask"],
    "conditioning_data_dir": ["--masked_loss"],
    "in_json": ["--train_data_dir", "{images}"],
    "prodigy_beta3": ["--optimizer_type", "Prodigy", "--learning_rate", "1"],
    "prodigy_decouple": ["--optimizer_type", "Prodigy", "--learning_rate", "1"],
    "prodigy_use_bias_correction": ["--optimizer_type", "Prodigy", "--learning_rate", "1"],
    "prodigy_safeguard_warmup": ["--optimizer_type", "Prodigy", "--learning_rate", "1"],
    "dim_from_weights": ["--network_weights", "{model}"],
    "token_abstraction": ["--train_text_encoder_ti", "--network_train_unet_only"],
    "num_new_tokens_per_abstraction": ["--train_text_encoder_ti", "--network_train_unet_only"],
    "initializer_token": ["--train_text_encoder_ti", "--network_train_unet_only"],
    "train_text_encoder_ti_frac": ["--train_text_encoder_ti", "--network_train_unet_only"],
    "adam_weight_decay_text_encoder": ["--train_text_encoder_ti", "--network_train_unet_only"],
}


def validate(argv: list[str]) -> Trainer:
    """Everything that runs before a model loads, as --print_config does."""
    return Trainer(resolve_config(argv))


def argv_for(option, value, machine) -> list[str]:
    values = value if isinstance(value, list) else [value]
    if option.parse is T.parse_bool:
        values = []  # the flag alone means true
    extra = [a.format(**{k: str(v) for k, v in machine.items() if k != "base"}) for a in COMPANIONS.get(option.name, [])]
    return [*machine["base"], *extra, f"--{option.name}", *values]


ACCEPTED = [name for name, option in OPTIONS.items() if option.status in (SUPPORTED, IGNORED, INERT)]
REFUSED = [name for name, option in OPTIONS.items() if option.status in (PENDING, UNSUPPORTED)]


def test_every_status_is_known():
    assert set(ACCEPTED) | set(REFUSED) == set(OPTIONS)
    assert {"fp8_base", "fp8_base_unet", "torch_compile", "cpu_offload_checkpointing", "max_data_loader_n_workers",
            "ddp_static_graph"} <= set(ACCEPTED)


@pytest.mark.parametrize("name", ACCEPTED)
def test_documented_as_accepted_is_accepted(name, machine):
    option = OPTIONS[name]
    for value in sample_values(option, machine):
        try:
            validate(argv_for(option, value, machine))
        except UserError as error:
            if option.requires and any(word in str(error) for word in option.requires.split(" and ")):
                continue  # a documented machine requirement (e.g. the wandb package)
            pytest.fail(f"{name} = {value!r} is documented as {option.status} but validation refuses it: {error}")


@pytest.mark.parametrize("name", REFUSED)
def test_documented_as_refused_is_refused(name, machine):
    option = OPTIONS[name]
    value = sample_values(option, machine)[0]
    with pytest.raises(UserError, match=rf"{name}: not supported"):
        validate(argv_for(option, value, machine))


def test_refused_choices_are_refused(machine):
    refused = [(name, choice) for name, option in OPTIONS.items() for choice in (option.refused_choices or {})]
    assert ("save_model_as", "ckpt") in refused and ("save_model_as", "pt") in refused
    for name, choice in refused:
        with pytest.raises(UserError, match=rf"{name} = '{choice}': not supported"):
            validate(argv_for(OPTIONS[name], choice, machine))
