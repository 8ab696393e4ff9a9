"""Helpers for training tests: a tiny image set with captions, and config files pointing at it."""
from __future__ import annotations

from pathlib import Path

import toml

from library.data.demo_images import make_concept_images  # noqa: F401  (re-exported for the tests)

def base_config(model: Path, train_dir: Path, output_dir: Path, **overrides) -> dict:
    """A small, fast, sectioned training config; overrides are (section, key) -> value or key -> value."""
    config = {
        "model_arguments": {"pretrained_model_name_or_path": str(model)},
        "dataset_arguments": {
            "train_data_dir": str(train_dir),
            "resolution": "64,64",
            "enable_bucket": True,
            "min_bucket_reso": 32,
            "max_bucket_reso": 128,
            "bucket_reso_steps": 32,
            "cache_latents": True,
        },
        "training_arguments": {
            "output_dir": str(output_dir),
            "output_name": "tiny_lora",
            "train_batch_size": 2,
            "max_train_steps": 4,
            "seed": 1234,
            "max_data_loader_n_workers": 0,
            # the memory pre-flight's meta pass costs ~1.4 s a run; tests/test_memory_preflight.py runs it
            "skip_memory_check": True,
        },
        "optimizer_arguments": {"optimizer_type": "AdamW", "learning_rate": 1e-3},
        "additional_network_arguments": {"network_module": "networks.lora", "network_dim": 4, "network_alpha": 2.0},
    }
    for key, value in overrides.items():
        section = next((s for s, table in config.items() if key in table), None)
        if section is None:
            from library.training.config.options import OPTIONS

            section = OPTIONS[key].section
        config.setdefault(section, {})
        if value is None:
            config[section].pop(key, None)
        else:
            config[section][key] = value
    return config


def write_config(path: Path, config: dict) -> Path:
    path.write_text(toml.dumps(config), encoding="utf-8")
    return path


def flat(config: dict) -> dict:
    return {key: value for table in config.values() for key, value in table.items()}


def run_training(tmp_path: Path, model: Path, train_dir: Path, name: str = "run", flat_file: bool = False, **overrides) -> Path:
    """Train with base_config + overrides through sdxl_train_network.main; returns the final LoRA."""
    from sdxl_train_network import main

    out = tmp_path / f"{name}_out"
    config = base_config(model, train_dir, out, **overrides)
    path = write_config(tmp_path / f"{name}.toml", flat(config) if flat_file else config)
    assert main(["--config_file", str(path)]) == 0
    return out / "tiny_lora.safetensors"


def lora_tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def train_in_process(tmp_path: Path, model: Path, train_dir: Path, name: str = "run", **overrides):
    """Trainer.setup + run without the command line; returns (trainer, final LoRA path) so a test can
    read the trainer's state (placement record, trained tensors)."""
    from library.training.config.config_loader import resolve_config
    from library.training.loop import Trainer

    config = base_config(model, train_dir, tmp_path / f"{name}_out", **overrides)
    trainer = Trainer(resolve_config(["--config_file", str(write_config(tmp_path / f"{name}.toml", config))]))
    trainer.setup()
    return trainer, trainer.run()
