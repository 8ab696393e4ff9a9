"""Schedule-free optimizers train (train mode for steps), and the saved LoRA holds the averaged
eval-mode weights, for schedulefree's own optimizers and for any optimizer in ScheduleFreeWrapper;
a resumed schedule-free run continues exactly (states are saved in train mode)."""
from __future__ import annotations

import pytest
import torch

from library.training.config.config_loader import resolve_config
from library.training.loop import Trainer
from tests.training_fixtures import base_config, flat, lora_tensors, make_concept_images, run_training, write_config


@pytest.fixture(scope="module")
def train_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("sf_data")
    make_concept_images(root / "2_catwomen", count=2, sizes=[(64, 64)])
    return root


def train(tmp_path, model, train_dir, **overrides) -> tuple[Trainer, object]:
    config = base_config(model, train_dir, tmp_path / "out", network_train_unet_only=True, **overrides)
    resolved = resolve_config(["--config_file", str(write_config(tmp_path / "c.toml", flat(config)))])
    trainer = Trainer(resolved)
    trainer.setup()
    return trainer, trainer.run()


@pytest.mark.parametrize("settings", [
    {"optimizer_type": "AdamWScheduleFree", "learning_rate": 1e-2},
    {"optimizer_type": "AdamW", "learning_rate": 1e-2, "optimizer_schedulefree_wrapper": True,
     "schedulefree_wrapper_args": ["momentum=0.9", "weight_decay_at_y=0.01"]},
], ids=["AdamWScheduleFree", "AdamW-in-ScheduleFreeWrapper"])
def test_schedule_free_trains_and_saves_the_eval_weights(settings, tiny_single_file, train_dir, tmp_path):
    trainer, final = train(tmp_path, tiny_single_file, train_dir, lr_scheduler="cosine", lr_warmup_steps=1, **settings)
    from library.training.optim.optimizer_classes import is_schedule_free

    assert is_schedule_free(trainer.optimizer)
    assert any("schedule-free optimizers keep a constant learning rate" in n for n in trainer.notices)
    train_weights = {k: v.clone() for k, v in trainer.network.state_dict().items()}  # y: where steps are taken
    trainer.schedule_free.eval()
    eval_weights = trainer.network.state_dict()  # x: the average (a y -> x lerp again: equal up to rounding)
    saved = lora_tensors(final)  # UNet-only: the file's names are the network's
    ups = [k for k in saved if k.endswith("lora_up.weight")]
    assert ups and saved.keys() == eval_weights.keys()
    assert all(torch.allclose(saved[k], eval_weights[k], rtol=0, atol=1e-8) for k in saved)
    assert max((saved[k] - train_weights[k]).abs().max().item() for k in ups) > 1e-6  # y != x after 4 steps
    assert max(saved[k].abs().max().item() for k in ups) > 0  # it trained (lora_up starts at zero)
    assert {group["lr"] for group in trainer.optimizer.param_groups} == {1e-2}  # constant, as kohya's dummy scheduler


@pytest.mark.parametrize("name", ["SGDScheduleFree", "RAdamScheduleFree"])
def test_other_schedule_free_optimizers_train(name, tiny_single_file, train_dir, tmp_path):
    final = run_training(tmp_path, tiny_single_file, train_dir, optimizer_type=name, learning_rate=1e-2, max_train_steps=2,
                         network_train_unet_only=True)
    moved = max(v.abs().max().item() for k, v in lora_tensors(final).items() if k.endswith("lora_up.weight"))
    assert moved > 0 if name == "SGDScheduleFree" else moved >= 0  # RAdam's rectified steps start at the 5th step


def test_schedule_free_resume_continues_exactly(tiny_single_file, train_dir, tmp_path):
    """The wrapper's own state_dict round trip, and train-mode states: bit-identical to an uninterrupted run."""
    common = dict(learning_rate=1e-2, save_state_on_train_end=True, network_train_unet_only=True, optimizer_type="AdamW",
                  optimizer_schedulefree_wrapper=True)
    full = run_training(tmp_path, tiny_single_file, train_dir, name="full", max_train_steps=4, **common)
    half = run_training(tmp_path, tiny_single_file, train_dir, name="half", max_train_steps=2, **common)
    resumed = run_training(tmp_path, tiny_single_file, train_dir, name="half", max_train_steps=4, resume=str(half.parent), **common)
    a, b = lora_tensors(full), lora_tensors(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
