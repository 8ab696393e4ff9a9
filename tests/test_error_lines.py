"""Mistakes and faults that used to end in a traceback print one `error:` line naming the file or option
and the fix: bad option values, a damaged base model header, damaged state files on --resume, a full
disk in the preparation scripts and in the state save; under `accelerate launch --quiet` our line is last."""
from __future__ import annotations

import errno
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from library.entry import run_cli

from library.errors import UserError
from tests.training_fixtures import base_config, make_concept_images, write_config

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def train_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("error_data")
    make_concept_images(root / "1_catwomen", count=2, sizes=[(64, 64)])
    return root


def _one_error_line(capsys, code: int, expected: str) -> str:
    """The run ended with exit code 2 and exactly one line on stderr, matching `expected`."""
    import re

    captured = capsys.readouterr()
    progress_bar = re.compile(r".*\d+%\|")  # tqdm's lines are not messages
    lines = [line for line in captured.err.replace("\r", "\n").splitlines() if line.strip() and not progress_bar.match(line)]
    assert code == 2, captured.err[-2000:]
    assert "Traceback" not in captured.err + captured.out
    assert len(lines) == 1 and re.fullmatch(expected, lines[0]), lines
    return lines[0]


def _train(argv) -> int:
    from sdxl_train_network import main

    return run_cli(main, argv)


@pytest.mark.parametrize("override, expected", [
    ({"learning_rate": -1e-4}, r"error: .*\[optimizer_arguments\]: learning_rate = -0\.0001: a learning rate cannot be negative; .*"),
    ({"network_dim": 0}, r"error: .*\[additional_network_arguments\]: network_dim = 0: the LoRA rank must be at least 1 .*"),
    ({"caption_extension": "captions/.txt"},
     r"error: .*\[dataset_arguments\]: caption_extension = 'captions/\.txt' contains a folder separator; .*\.caption.*"),
])
def test_bad_option_values(tiny_single_file, train_dir, tmp_path, capsys, override, expected):
    config = write_config(tmp_path / "c.toml", base_config(tiny_single_file, train_dir, tmp_path / "out", **override))
    _one_error_line(capsys, _train(["--config_file", str(config)]), expected)


def _rewrite_header(source: Path, target: Path, change) -> Path:
    data = source.read_bytes()
    length = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + length])
    change(header, next(k for k in header if k != "__metadata__"))
    raw = json.dumps(header).encode()
    target.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + length :])
    return target


@pytest.mark.parametrize("change, problem", [
    (lambda h, k: h.__setitem__(k, 5), "is not an object"),  # was a TypeError in read_safetensors_header
    (lambda h, k: h[k].__setitem__("dtype", "F99"), "has an unknown dtype 'F99'"),  # was a SafetensorError
    (lambda h, k: h[k].__setitem__("data_offsets", [h[k]["data_offsets"][0], h[k]["data_offsets"][0] + 4]), "holds 4 bytes"),
    (lambda h, k: h[k].__setitem__("shape", "x"), "has an invalid shape 'x'"),
])
def test_malformed_base_model_header(tiny_single_file, train_dir, tmp_path, capsys, change, problem):
    bad = _rewrite_header(tiny_single_file, tmp_path / "bad.safetensors", change)
    config = write_config(tmp_path / "c.toml", base_config(bad, train_dir, tmp_path / "out"))
    _one_error_line(capsys, _train(["--config_file", str(config)]),
                    rf"error: {bad}: damaged safetensors header \(tensor '.*' {problem}.*\); download or copy the file again")


def test_damaged_state_files_name_the_file(tmp_path):
    from library.training.outputs.train_state import Progress, load_state, save_state

    network = torch.nn.Linear(4, 4)
    optimizer = torch.optim.AdamW(network.parameters())
    network(torch.ones(1, 4)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    older = save_state(tmp_path / "x-step00000001-state", Progress(global_step=1), network, optimizer, scheduler)
    for name in ("network.safetensors", "optimizer.pt", "scheduler.pt", "rng_and_extra.pt"):
        folder = save_state(tmp_path / "x-step00000002-state", Progress(global_step=2), network, optimizer, scheduler)
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) // 2])
        with pytest.raises(UserError, match=rf"^{folder / name}: damaged or truncated \(.*\); this state cannot be resumed: "
                                            rf"resume from an older state \({older.name}\) or delete {folder.name} and start again$"):
            load_state(folder, network, optimizer, scheduler)


def test_truncated_state_on_resume_is_one_line(tiny_single_file, train_dir, tmp_path, capsys):
    config = write_config(tmp_path / "c.toml", base_config(tiny_single_file, train_dir, tmp_path / "out", max_train_steps=1,
                                                           save_state_on_train_end=True))
    assert _train(["--config_file", str(config)]) == 0
    state = tmp_path / "out" / "tiny_lora-state"
    data = (state / "optimizer.pt").read_bytes()
    (state / "optimizer.pt").write_bytes(data[:1000])
    capsys.readouterr()
    _one_error_line(capsys, _train(["--config_file", str(config), "--max_train_steps", "2", "--resume", str(tmp_path / "out")]),
                    rf"error: {state / 'optimizer.pt'}: damaged or truncated \(PytorchStreamReader failed .*\); this state cannot be "
                    rf"resumed: delete tiny_lora-state and start again")


def test_full_disk_in_preparation_scripts_and_state_save(train_dir, tmp_path, capsys, monkeypatch):
    from finetune.merge_all_to_metadata import main as merge_main

    real_replace = os.replace

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    # the text is written, then renamed: a write that runs out of space raises ENOSPC
    monkeypatch.setattr(Path, "write_text", lambda self, *a, **k: full_disk())
    out = tmp_path / "meta.json"
    _one_error_line(capsys, run_cli(merge_main, [str(train_dir / "1_catwomen"), str(out)]),
                    rf"error: {out}: cannot write \(no space left on the disk; .* free in {tmp_path}\); free some space or "
                    "choose another folder, then run again")
    monkeypatch.undo()
    assert not list(tmp_path.glob(".meta.json*"))  # the temporary file is gone too

    # numpy's savez (latent caches) on a full disk
    from library.data.caching.latent_cache import CacheFingerprint, LatentCache, save_latent_cache

    monkeypatch.setattr(np, "savez", full_disk)
    with pytest.raises(UserError, match=r"x_0064x0064_sdxl\.npz: cannot write \(no space left on the disk; "):
        save_latent_cache(tmp_path / "x_0064x0064_sdxl.npz",
                          LatentCache(np.zeros((4, 8, 8), np.float32), (64, 64), (0, 0, 64, 64), (64, 64)),
                          CacheFingerprint("0" * 64, (64, 64), (0, 0, 64, 64), "vae"))
    monkeypatch.undo()

    # torch.save on a full disk says only "unexpected pos": the state save names the folder and the disk
    from library.training.outputs.train_state import Progress, save_state

    def torch_full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", torch_full)
    network = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    with pytest.raises(UserError, match=r"x-state: cannot write \(the write was cut short, usually because the disk is full; "
                                        rf".* free in {tmp_path}\)"):
        save_state(tmp_path / "x-state", Progress(), network, optimizer, scheduler)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".x-state")]
    assert real_replace is os.replace


@pytest.mark.subprocess
def test_accelerate_launch_quiet_leaves_our_line_last(tiny_single_file, train_dir, tmp_path):
    config = write_config(tmp_path / "c.toml", base_config(tiny_single_file, train_dir, tmp_path / "out", network_dim=0))
    result = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--quiet", "--num_processes", "1", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", str(REPO / "sdxl_train_network.py"), "--config_file", str(config)],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}, timeout=300,
    )
    assert result.returncode == 1  # accelerate's own code for a failed child when --quiet
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {config} [additional_network_arguments]: network_dim = 0")


def test_a_full_disk_anywhere_is_one_line(capsys, tmp_path):
    def main(argv):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "events.out.tfevents.1"))

    _one_error_line(capsys, run_cli(main, []), rf"error: {tmp_path}/events\.out\.tfevents\.1: cannot write \(no space left on the "
                                                rf"disk; .* free in {tmp_path}\); free some space or choose another folder, then run again")

    def bug(argv):
        raise OSError(errno.ENOENT, "No such file or directory")

    with pytest.raises(OSError):  # anything else is a bug and keeps its traceback
        run_cli(bug, [])
