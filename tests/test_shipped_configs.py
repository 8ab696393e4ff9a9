"""Every config under train_config/ validates against the schema and trains a step on the tiny model
(only paths, sizes, length and sample prompts overridden on the command line, as a user would)."""
from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from library.training.config.config_loader import resolve_config
from tests.training_fixtures import make_concept_images

REPO = Path(__file__).resolve().parent.parent
CONFIGS = sorted(p.parent.name for p in (REPO / "train_config").glob("*/config_file.toml"))


def test_every_shipped_config_is_found():
    assert {"XL_LoRA_config", "XL_LoCon_config", "XL_LyCORIS_LoCon_config", "XL_LoHa_config",
            "XL_Pivotal_Prodigy_config", "quickstart_tiny"} <= set(CONFIGS)


@pytest.mark.parametrize("folder", CONFIGS)
def test_config_validates_and_its_sample_prompts_parse(folder):
    from library.training.config.sample_prompts import load_sample_prompts

    resolved = resolve_config(["--config_file", str(REPO / "train_config" / folder / "config_file.toml")])
    assert not [n for n in resolved.notices if "forwarded" in n]  # shipped configs use network_args properly
    assert load_sample_prompts(REPO / "train_config" / folder / "sample_prompt.toml")


@pytest.fixture(scope="module")
def datasets(tiny_sdxl_dir, tmp_path_factory):
    """A metadata dataset (meta_lat.json, for the kohya flow) and a DreamBooth folder with TOK captions."""
    from finetune.merge_all_to_metadata import main as merge_main
    from finetune.prepare_buckets_latents import main as buckets_main

    root = tmp_path_factory.mktemp("shipped")
    images = root / "images"
    make_concept_images(images, count=2, caption="catwomen, 1girl", sizes=[(64, 64)], tags=True)
    assert merge_main([str(images), str(root / "meta_clean.json")]) == 0
    assert buckets_main([str(images), str(root / "meta_clean.json"), str(root / "meta_lat.json"),
                         str(tiny_sdxl_dir / "sdxl_tiny.safetensors"), "--max_resolution", "64,64",
                         "--min_bucket_reso", "32", "--max_bucket_reso", "128", "--bucket_reso_steps", "32"]) == 0
    make_concept_images(root / "dreambooth" / "1_TOK", count=2, caption_extension=".txt", caption="TOK, 1girl", sizes=[(64, 64)])
    prompts = root / "prompts.txt"
    prompts.write_text("catwomen, 1girl --w 64 --h 64 --s 2 --d 3\n")
    return root


@pytest.mark.parametrize("folder", CONFIGS)
def test_config_trains_a_step_on_the_tiny_model(folder, datasets, tiny_single_file, tmp_path):
    from sdxl_train_network import main

    config = REPO / "train_config" / folder / "config_file.toml"
    data = tomllib.loads(config.read_text())
    flat = {k: v for table in data.values() for k, v in table.items()}
    overrides = ["--pretrained_model_name_or_path", str(tiny_single_file), "--output_dir", str(tmp_path / "out"),
                 "--logging_dir", str(tmp_path / "logs"), "--resolution", "64,64", "--train_batch_size", "2",
                 "--sample_prompts", str(datasets / "prompts.txt")]
    if "in_json" in flat:
        overrides += ["--in_json", str(datasets / "meta_lat.json"), "--train_data_dir", str(datasets / "images")]
    else:
        overrides += ["--train_data_dir", str(datasets / "dreambooth")]
    if "reg_data_dir" in flat:  # the toy world recipe's prior preservation (trained for real in test_toy_world.py)
        overrides += ["--reg_data_dir", str(datasets / "dreambooth")]
    if flat.get("enable_bucket"):
        overrides += ["--min_bucket_reso", "32", "--max_bucket_reso", "128", "--bucket_reso_steps", "32"]
    overrides += ["--max_train_epochs", "1"] if "max_train_epochs" in flat else ["--max_train_steps", "1"]
    if "vae" in flat:
        overrides += ["--vae", str(tiny_single_file.parent / "diffusers" / "vae")]
    assert main(["--config_file", str(config), *overrides]) == 0
    loras = list((tmp_path / "out").glob("*.safetensors"))
    assert any(p.stem == flat["output_name"] for p in loras), loras
