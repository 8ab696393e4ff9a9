"""What kohya's sdxl_train_network accepts trains here too: a fixed timestep (min_timestep ==
max_timestep), fused_backward_pass copied from full fine-tuning configs, sample-prompt flags for
other models, and kohya's networks.lora_fa; networks.oft is refused naming its LyCORIS equivalent."""
from __future__ import annotations

import contextlib
import io

import pytest
import torch

from library.errors import UserError
from library.models.checkpoint_file import read_metadata
from library.training.config.config_loader import resolve_config
from library.training.loop import Trainer
from tests.training_fixtures import base_config, flat, lora_tensors, make_concept_images, write_config


@pytest.fixture(scope="module")
def train_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("accepts")
    make_concept_images(root / "1_ohwx", count=2, sizes=[(64, 64)])
    return root


def run_main(config_path, *extra) -> str:
    from sdxl_train_network import main

    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main(["--config_file", str(config_path), *extra]) == 0
    return stdout.getvalue()


def test_fixed_timestep_fused_backward_pass_and_foreign_sample_flags_train(tiny_single_file, train_dir, tmp_path, monkeypatch):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("ohwx --W 64 --H 64 --cn pose.png --am 1.5 --s 2 --d 4\n")
    config = base_config(tiny_single_file, train_dir, tmp_path / "out", max_train_steps=2, min_timestep=500, max_timestep=500,
                         fused_backward_pass=True, optimizer_type="AdaFactor", learning_rate=1e-3, sample_prompts=str(prompts),
                         sample_at_first=True)
    seen = []
    unet_forward = None

    def record_timesteps(trainer_self):
        nonlocal unet_forward
        unet = trainer_self.model.unet
        unet_forward = unet.forward

        def forward(sample, timestep, *args, **kwargs):
            if torch.is_grad_enabled():  # training steps, not the sampler
                seen.extend(int(t) for t in timestep.reshape(-1))
            return unet_forward(sample, timestep, *args, **kwargs)

        unet.forward = forward

    original_run = Trainer.run

    def run(trainer_self):
        record_timesteps(trainer_self)
        return original_run(trainer_self)

    monkeypatch.setattr(Trainer, "run", run)
    out = run_main(write_config(tmp_path / "c.toml", config))
    assert seen == [500] * 4  # 2 steps x batch 2, every one at the fixed timestep
    assert "notice: fused_backward_pass is ignored: an option of full fine-tuning" in out
    assert "ignored what kohya does not use for SDXL LoRA samples either: --cn" in out and "--am" in out
    assert sorted(p.name for p in (tmp_path / "out" / "sample").glob("*.png")) == ["tiny_lora_e000000_00_4.png"]


@pytest.mark.parametrize("low, high, message", [
    (600, 500, r"min_timestep 600 must not be above max_timestep 500"),
    (1000, 1000, r"min_timestep must be in 0\.\.999"),
    (None, 0, r"max_timestep must be in 1\.\.1000"),
])
def test_timestep_ranges_kohya_cannot_train_are_refused(tiny_single_file, train_dir, tmp_path, low, high, message):
    config = base_config(tiny_single_file, train_dir, tmp_path / "out", min_timestep=low, max_timestep=high)
    with pytest.raises(UserError, match=message):
        Trainer(resolve_config(["--config_file", str(write_config(tmp_path / "c.toml", flat(config)))]))


def test_lora_fa_trains_only_the_up_weights(tiny_single_file, train_dir, tmp_path):
    config = base_config(tiny_single_file, train_dir, tmp_path / "out", network_module="networks.lora_fa", max_train_steps=2,
                         network_args=["conv_dim=2"])
    trainer = Trainer(resolve_config(["--config_file", str(write_config(tmp_path / "c.toml", config))]))
    trainer.setup()
    downs = {name: p.detach().clone() for name, p in trainer.network.named_parameters() if "lora_down" in name}
    trained = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert all(id(p) not in trained and not p.requires_grad for n, p in trainer.network.named_parameters() if "lora_down" in n)
    assert all(id(p) in trained for n, p in trainer.network.named_parameters() if "lora_up" in n)
    # kohya's LoRA-FA start for A: N(0, 2 / (in + rank)); here rank 4 on a Linear of 64 inputs and a 3x3 conv at rank 2
    linear = next(p for n, p in trainer.network.named_parameters() if n.endswith("attn1_to_q.lora_down.weight"))
    assert linear.shape[1] == 64 and linear.std().item() == pytest.approx((2 / (64 + 4)) ** 0.5, rel=0.1)
    final = trainer.run()
    saved = lora_tensors(final)
    for name, before in downs.items():
        assert torch.equal(saved[name].float(), before.float()), name  # A never moved
    assert any(saved[k].abs().sum() > 0 for k in saved if k.endswith("lora_up.weight"))
    assert read_metadata(final)["ss_network_module"] == "networks.lora_fa"
    from networks import lora

    plain, _ = lora.create_network_from_weights(1.0, str(final), None, trainer.model.text_encoders, trainer.model.unet)
    assert set(plain.state_dict()) == set(saved)  # an ordinary LoRA file


def test_networks_oft_is_refused_naming_the_lycoris_algorithm(tiny_single_file, train_dir, tmp_path):
    config = base_config(tiny_single_file, train_dir, tmp_path / "out", network_module="networks.oft")
    with pytest.raises(UserError, match=r'network_module = "networks\.oft": .*"lycoris\.kohya".*algo=diag-oft.*algo=boft'):
        Trainer(resolve_config(["--config_file", str(write_config(tmp_path / "c.toml", flat(config)))]))
