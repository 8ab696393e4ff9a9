"""A long run you can trust: exact resume, safe states, samples, logs, validation, stop and NaN handling,
and data-parallel training in two processes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from library.errors import UserError
from library.training.outputs.train_state import find_state
from tests.training_fixtures import base_config, lora_tensors, make_concept_images, run_training, write_config

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def train_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("run_data")
    make_concept_images(root / "2_catwomen", count=4)  # 3 buckets -> steps cross epoch boundaries
    return root


def logged(log_dir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = []
    for events in sorted(log_dir.rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        if tag in accumulator.Tags()["scalars"]:
            values += [(e.step, e.value) for e in accumulator.Scalars(tag)]
    return sorted(values)


def _run(tmp_path, model, train_dir, name, steps, resume=None, **overrides):
    return run_training(tmp_path, model, train_dir, name=name, max_train_steps=steps, save_state_on_train_end=True,
                        log_with="tensorboard", logging_dir=str(tmp_path / f"{name}_logs"), resume=resume,
                        network_dropout=0.1, **overrides)


def test_resume_continues_bit_for_bit(tiny_single_file, train_dir, tmp_path):
    full = _run(tmp_path, tiny_single_file, train_dir, "full", 8)
    half = _run(tmp_path, tiny_single_file, train_dir, "half", 4)
    resumed = _run(tmp_path, tiny_single_file, train_dir, "half", 8, resume=str(half.parent))
    a, b = lora_tensors(full), lora_tensors(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    full_losses = logged(tmp_path / "full_logs", "loss/current")
    split_losses = logged(tmp_path / "half_logs", "loss/current")
    assert [s for s, _ in full_losses] == list(range(1, 9)) and full_losses == split_losses

    # three runs: 2 + 2 + 4 steps
    for steps in (2, 4, 8):
        last = _run(tmp_path, tiny_single_file, train_dir, "thirds", steps,
                    resume=str(tmp_path / "thirds_out") if steps > 2 else None)
    c = lora_tensors(last)
    assert all(torch.equal(a[k], c[k]) for k in a)
    assert logged(tmp_path / "thirds_logs", "loss/current") == full_losses


def test_interrupted_state_save_is_never_picked(tiny_single_file, train_dir, tmp_path):
    out = _run(tmp_path, tiny_single_file, train_dir, "safe", 2).parent
    good = find_state(out)
    assert good.name == "tiny_lora-state"
    # a later save that died half-way: a hidden temporary folder and a folder without its marker
    (out / ".tiny_lora-step00000009-state.abc123").mkdir()
    broken = out / "tiny_lora-step00000009-state"
    broken.mkdir()
    (broken / "network.safetensors").write_bytes(b"partial")
    assert find_state(out) == good
    with pytest.raises(UserError, match=r"this state is incomplete"):
        (broken / "train_state.json").write_text(json.dumps({"complete": False, "global_step": 9}))
        find_state(broken)


def test_nan_loss_stops_with_advice_and_saves_last_good_state(tiny_single_file, train_dir, tmp_path):
    with pytest.raises(UserError, match=r"loss became nan at step \d+ .*last good state was saved.*Lower the learning rate"):
        run_training(tmp_path, tiny_single_file, train_dir, name="nan", max_train_steps=6, learning_rate=1e30,
                     optimizer_type="SGDNesterov")
    states = list((tmp_path / "nan_out").glob("*-state"))
    assert len(states) == 1
    weights = lora_tensors(states[0] / "network.safetensors")
    assert all(torch.isfinite(v).all() for v in weights.values())


def test_samples_logs_and_validation(tiny_single_file, train_dir, tmp_path):
    prompts_txt = tmp_path / "prompts.txt"
    prompts_txt.write_text("# comment\ncatwomen on a roof --n blurry --w 64 --h 96 --d 7 --s 3 --l 5\ncatwomen --s 2\n")
    prompts_toml = tmp_path / "prompts.toml"
    prompts_toml.write_text('[prompt]\nwidth = 64\nheight = 64\nsample_steps = 2\n[[prompt.subset]]\nprompt = "catwomen"\nseed = 11\n'
                            '[[prompt.subset]]\nprompt = "catwomen"\nseed = 11\nsample_sampler = "k_euler"\n')
    lora = run_training(tmp_path, tiny_single_file, train_dir, name="txt", max_train_steps=3, sample_prompts=str(prompts_txt),
                        sample_every_n_steps=2, sample_at_first=True, sample_sampler="euler_a", log_with="tensorboard",
                        logging_dir=str(tmp_path / "logs"), log_prefix="demo_", validation_split=0.25, validate_every_n_steps=1,
                        metadata_title="catwomen", metadata_thumbnail=str(next(train_dir.rglob("*.png"))))
    from library.models.checkpoint_file import read_metadata

    metadata = read_metadata(lora)
    assert metadata["modelspec.title"] == "catwomen" and metadata["modelspec.thumbnail"].startswith("data:image/jpeg;base64,")
    samples = sorted(p.name for p in (tmp_path / "txt_out" / "sample").glob("*.png"))
    assert samples == ["tiny_lora_000002_00_7.png", "tiny_lora_000002_01_1235.png", "tiny_lora_e000000_00_7.png", "tiny_lora_e000000_01_1235.png"]
    assert Image.open(tmp_path / "txt_out" / "sample" / "tiny_lora_000002_00_7.png").size == (64, 96)
    assert Image.open(tmp_path / "txt_out" / "sample" / "tiny_lora_000002_01_1235.png").size == (64, 64)  # training resolution
    run_dir = next((tmp_path / "logs").iterdir())
    assert run_dir.name.startswith("demo_")
    for tag in ("loss/current", "loss/average", "lr/unet", "lr/textencoder", "loss/validation/step_average", "loss/epoch_average"):
        assert logged(run_dir, tag), tag
    validation = [v for _, v in logged(run_dir, "loss/validation/step_average")]
    assert len(validation) == 3 and all(np.isfinite(validation))
    assert logged(run_dir, "loss/validation/epoch_average")  # kohya also validates every epoch unless told otherwise

    run_training(tmp_path, tiny_single_file, train_dir, name="toml", max_train_steps=1, sample_prompts=str(prompts_toml),
                 sample_at_first=True)
    first, second = sorted((tmp_path / "toml_out" / "sample").glob("*.png"))
    # same seed, same image; a different sampler from the same noise gives a different one
    again = run_training(tmp_path, tiny_single_file, train_dir, name="toml2", max_train_steps=1, sample_prompts=str(prompts_toml),
                         sample_at_first=True)
    first_again = sorted((again.parent / "sample").glob("*.png"))[0]
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(first_again)))
    assert not np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(second)))


def test_sample_prompt_flags_kohya_does_not_use_are_ignored_with_a_notice(tmp_path):
    """kohya matches flags case-insensitively and skips any it does not know (--cn is ControlNet's,
    --am the generation script's); values of the flags it uses must be numbers."""
    from library.training.config.sample_prompts import SamplePrompt, load_sample_prompts

    path = tmp_path / "p.txt"
    path.write_text("a cat --cn pose.png --W 80 --am 1.2 --D 5\na dog --x 3 --n blurry\n")
    notices = []
    assert load_sample_prompts(path, notices) == [SamplePrompt("a cat", width=80, seed=5), SamplePrompt("a dog", negative_prompt="blurry")]
    assert notices == [f"{path}: ignored what kohya does not use for SDXL LoRA samples either: --cn ({path}:1), --am ({path}:1), "
                       f"--x ({path}:2)"]
    toml_path = tmp_path / "p.toml"
    toml_path.write_text('[prompt]\nguidance_scale = 3.5\n[[prompt.subset]]\nprompt = "a cat"\ncontrolnet_image = "c.png"\n')
    notices = []
    assert load_sample_prompts(toml_path, notices) == [SamplePrompt("a cat")]
    assert "guidance_scale" in notices[0] and "controlnet_image" in notices[0]
    toml_path.write_text('[prompt]\n[[prompt.subset]]\nprompt = "a cat"\nnegativ_prompt = "x"\n')
    with pytest.raises(UserError, match=r"p\.toml: \[\[prompt\.subset\]\] #1: unknown key 'negativ_prompt'"):
        load_sample_prompts(toml_path)
    bad = tmp_path / "bad.txt"
    bad.write_text("a cat --w wide\n")
    with pytest.raises(UserError, match=r"width = 'wide' is not a number"):
        load_sample_prompts(bad)


def launch_two_processes(config: Path, cwd: Path) -> subprocess.CompletedProcess:
    """`accelerate launch --multi_gpu --num_processes 2 sdxl_train_network.py --config_file config` on the CPU."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", str(REPO / "sdxl_train_network.py"), "--config_file", str(config)],
        capture_output=True, text=True, env=env, timeout=600, cwd=cwd,
    )


@pytest.mark.subprocess
def test_two_process_data_parallel_training(tiny_single_file, train_dir, tmp_path):
    """Two CPU processes through accelerate's DDP: per-rank module/rank dropout and accumulation, and
    still bit-identical weights on both ranks after every step (ddp_check_sync gathers a digest)."""
    config = base_config(tiny_single_file, train_dir, tmp_path / "out", max_train_steps=3, train_batch_size=1,
                         gradient_accumulation_steps=2, cache_latents_to_disk=True, ddp_check_sync=True,
                         network_args=["module_dropout=0.3", "rank_dropout=0.3"])
    path = write_config(tmp_path / "mp.toml", config)
    result = launch_two_processes(path, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "2 process(es)" in output
    assert "ddp_check_sync: all 2 processes held identical network weights after each of 3 steps" in output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["tiny_lora.safetensors"]
    assert output.count("saved ") == 1  # one writer
    trained = lora_tensors(tmp_path / "out" / "tiny_lora.safetensors")
    assert any(v.abs().sum() > 0 for k, v in trained.items() if "lora_up" in k)


@pytest.mark.subprocess
def test_two_processes_step_with_the_mean_of_their_gradients(tiny_single_file, train_dir, tmp_path):
    """One SGD step in two processes (one image each) equals the step taken, in this process, with the
    mean of the gradients the two ranks' batches give: DDP averages gradients, it does not only keep
    the ranks equal (summed or rank-0 gradients would give another update)."""
    from library.training.inputs.batch_plan import epoch_batches
    from library.training.inputs.run_plan import epoch_seeds
    from library.training.config.config_loader import resolve_config
    from library.training.loop import Trainer

    config = base_config(tiny_single_file, train_dir, tmp_path / "out", max_train_steps=1, train_batch_size=1,
                         optimizer_type="torch.optim.SGD", learning_rate=1.0, max_grad_norm=0.0, cache_latents_to_disk=True)
    path = write_config(tmp_path / "mp.toml", config)
    result = launch_two_processes(path, tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    trained = lora_tensors(tmp_path / "out" / "tiny_lora.safetensors")

    trainer = Trainer(resolve_config(["--config_file", str(path)]))
    trainer.setup()  # the same seed: the same initial network as both processes
    batches = epoch_batches(trainer.items, trainer.summary["batch_sizes"], trainer.seed, 1)
    seeds = epoch_seeds(trainer.seed, batches, 1)
    names = [name for name, p in trainer.network.named_parameters() if p.requires_grad]
    params = [p for p in trainer.network.parameters() if p.requires_grad]
    initial = [p.detach().clone() for p in params]
    per_rank = [torch.autograd.grad(trainer.objective.batch_loss(batches[rank], seeds[rank], 1, 0), params, allow_unused=True)
                for rank in (0, 1)]  # rank r trains the epoch's batches r, r + 2, ...
    moved = 0
    for name, start, g0, g1 in zip(names, initial, *per_rank):
        g0 = torch.zeros_like(start) if g0 is None else g0
        g1 = torch.zeros_like(start) if g1 is None else g1
        torch.testing.assert_close(trained[name].float(), start - (g0 + g1) / 2, rtol=1e-4, atol=1e-6)
        moved += int((g0 - g1).abs().max() > 1e-6)
    assert moved > 0  # the ranks' gradients differ, so only their mean gives these weights