"""Decisions several processes take together (library/training/parallel/distributed.py), with two real CPU
processes under `accelerate launch`. Each test would hang (or stop with a collective mismatch)
before processes shared the decision; each is bounded by a timeout.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.training_fixtures import base_config, make_concept_images, write_config

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.subprocess


def launch(tmp_path: Path, config: Path, hooks: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "RANK_HOOKS": hooks,
           "RANK_HOOKS_DIR": str(tmp_path), "TQDM_DISABLE": "1"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", str(REPO / "tests" / "rank_hooks.py"), "--config_file", str(config)]
    # its own process group: a hung run is killed whole (the ranks too, or they would hold the pipe open)
    return subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def finish(process: subprocess.Popen, timeout: float) -> str:
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"the processes did not finish within {timeout:.0f} s (a hang):\n{output[-3000:]}")
    return output


def captions_for_both_processes(count: int) -> list[str]:
    """Distinct captions such that each of two processes owns at least one (text_conditioning._owner)."""
    from library.training.inputs.text_conditioning import _owner

    candidates = [f"TOK, photo {n}" for n in range(40)]
    zero = [c for c in candidates if _owner(c, 2) == 0]
    one = [c for c in candidates if _owner(c, 2) == 1]
    return (zero[:1] + one[:1] + zero[1:] + one[1:])[:count]


def dataset(tmp_path: Path, count: int = 3) -> Path:
    folder = tmp_path / "train" / "1_TOK"
    images = make_concept_images(folder, count=count, sizes=[(64, 64)])
    for image, caption in zip(images, captions_for_both_processes(count)):
        image.with_suffix(".caption").write_text(caption, encoding="utf-8")
    return tmp_path / "train"


def items_of(config: Path):
    from library.data.images import SkipLog
    from library.training.config.config_loader import resolve_config
    from library.training.config.dataset_config import dataset_specs
    from library.training.inputs.train_items import build_items

    return build_items(dataset_specs(resolve_config(["--config_file", str(config)]).args), SkipLog(), [])


def test_partly_stale_latent_cache_uneven_batches_and_a_shared_text_cache(tiny_single_file, tmp_path):
    """Process 1 checks the latent caches late, after process 0 has rewritten its stale ones: both still
    take the same caching branch (the work list is shared). 3 batches over 2 processes give 2 steps per
    epoch (ceil, the first batch repeated, as accelerate's even batches), and the text-encoder outputs
    are encoded half by each process."""
    from tools import cache_latents

    train = dataset(tmp_path)
    config = write_config(tmp_path / "c.toml", base_config(
        tiny_single_file, train, tmp_path / "out", train_batch_size=1, max_train_steps=None, max_train_epochs=1,
        cache_latents=None, cache_latents_to_disk=True, cache_text_encoder_outputs=True, cache_text_encoder_outputs_to_disk=True,
        network_train_unet_only=True, ddp_check_sync=True))
    assert cache_latents.main(["--config_file", str(config)]) == 0
    items = items_of(config)
    for index in (0, 2):  # the caches process 0 owns go stale: their images changed
        path = items[index].image_path
        pixels = np.asarray(Image.open(path).convert("RGB")).copy()
        Image.fromarray(255 - pixels).save(path)
    output = finish(launch(tmp_path, config, "slow_cache_check,count_text_encoding"), timeout=420)
    assert "training 2 steps (1 epochs of 2)" in output, output[-3000:]
    assert "ddp_check_sync: all 2 processes held identical network weights after each of 2 steps" in output, output[-3000:]
    assert (tmp_path / "out" / "tiny_lora.safetensors").exists()
    encoded = [int((tmp_path / f"encoded_rank{rank}").read_text()) for rank in (0, 1)]
    assert sorted(encoded) == [1, 2]  # 3 distinct captions, split by text between the two processes
    assert all(Path(str(item.image_path)).with_name(Path(item.image_path).stem + "_te_outputs.npz").exists() for item in items)


def test_a_stop_signal_to_one_process_stops_both_at_the_same_step(tiny_single_file, tmp_path):
    """SIGTERM reaches process 1 only (a scheduler or `kill` stopping one rank): both processes stop at
    the same step, one resumable state is saved, and the run exits with the signal's code."""
    train = dataset(tmp_path)
    config = write_config(tmp_path / "c.toml", base_config(
        tiny_single_file, train, tmp_path / "out", train_batch_size=1, max_train_steps=40, cache_text_encoder_outputs=True,
        network_train_unet_only=True))
    process = launch(tmp_path, config, "step_markers,count_text_encoding")
    deadline = time.monotonic() + 300
    while not (tmp_path / "step1_rank1").exists():
        if process.poll() is not None or time.monotonic() > deadline:
            output = finish(process, timeout=10)
            pytest.fail(f"the run ended or stalled before its first step:\n{output[-3000:]}")
        time.sleep(0.2)
    os.kill(int((tmp_path / "pid_rank1").read_text()), signal.SIGTERM)
    output = finish(process, timeout=240)
    states = sorted(p.name for p in (tmp_path / "out").glob("*-state"))
    assert len(states) == 1, (states, output[-3000:])
    step = int(states[0].removeprefix("tiny_lora-step").removesuffix("-state"))
    assert (tmp_path / f"step{step}_rank0").exists() and (tmp_path / f"step{step}_rank1").exists()
    assert not list(tmp_path.glob(f"step{step + 1}_rank*")), "a process went on after the other stopped"
    assert f"stopped at step {step}" in output
    assert process.returncode != 0
    encoded = [int((tmp_path / f"encoded_rank{rank}").read_text()) for rank in (0, 1)]
    assert sorted(encoded) == [1, 2]  # in-memory text cache: encoded half each, then shared


def test_too_little_memory_on_one_process_stops_both_before_the_models_load(tiny_single_file, tmp_path):
    """Process 1's device has too little free memory: it stops with the numbers, process 0 stops with it
    (instead of loading the models and waiting for a process that is gone), and no model is loaded."""
    train = dataset(tmp_path)
    config = write_config(tmp_path / "c.toml", base_config(tiny_single_file, train, tmp_path / "out", train_batch_size=1,
                                                           max_train_steps=2, skip_memory_check=None))
    output = finish(launch(tmp_path, config, "scarce_memory_on_rank1,count_model_loads"), timeout=240)
    assert "test: 1 MiB free" in output, output[-3000:]  # process 1's own error line
    assert "another process of this run found too little free memory" in output, output[-3000:]  # process 0's
    assert not list(tmp_path.glob("loaded_rank*")), "a process loaded the models"
    assert not list((tmp_path / "out").glob("*.safetensors"))

