"""A disk that fills up while a file is being written, as it really happens: safetensors raises
SafetensorError (a plain Exception, "... (os error 28)"), torch.save a RuntimeError. The trainer
rescues the weights it has trained; every tool that writes safetensors ends with one `error:` line,
exit code 2, nothing half-written and its inputs untouched."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
import torch

from library.entry import run_cli
from tests.full_disk import FullDisk
from tests.tools_fixtures import read, write_lora
from tests.training_fixtures import base_config, lora_tensors, make_concept_images, write_config


def _digests(*roots: Path) -> dict:
    files = [p for root in roots for p in ([root] if root.is_file() else sorted(root.rglob("*"))) if p.is_file()]
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _stderr_lines(capsys) -> list[str]:
    """What the run printed on stderr, without tqdm's progress bars."""
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    return [line for line in captured.err.replace("\r", "\n").splitlines() if line.strip() and not re.match(r".*\d+%\|", line)]


@pytest.fixture(scope="module")
def train_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("full_disk_data")
    make_concept_images(root / "2_catwomen", count=4)
    return root


def test_the_disk_filling_during_a_lora_save_rescues_the_trained_weights(tiny_single_file, train_dir, tmp_path, monkeypatch,
                                                                         capsys):
    from sdxl_train_network import main
    from library.training.outputs import save_rescue
    from library.training.loop import Trainer

    common = dict(max_train_steps=4, save_every_n_steps=2, save_state=True)
    reference = write_config(tmp_path / "ref.toml", base_config(tiny_single_file, train_dir, tmp_path / "ref_out", **common))
    assert run_cli(main, ["--config_file", str(reference)]) == 0
    inputs = _digests(train_dir, tiny_single_file)
    monkeypatch.setattr(save_rescue, "RETRY_DELAY", 0)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with FullDisk(tmp_path / "disk") as disk:
        out = disk.folder / "out"
        real_step, filled = Trainer.optimizer_step, []

        def step_then_fill(self):  # another program takes the last free byte during step 1
            logs = real_step(self)
            if not filled:
                disk.fill()
                filled.append(True)
            return logs

        monkeypatch.setattr(Trainer, "optimizer_step", step_then_fill)
        config = write_config(tmp_path / "full.toml", base_config(tiny_single_file, train_dir, out, **common))
        capsys.readouterr()
        assert run_cli(main, ["--config_file", str(config)]) == 2
        lines = _stderr_lines(capsys)
        left_behind = disk.user_files()
        free_at_end = disk.free() if disk.mounted else None
    rescue = re.escape(str(tmp_path / "home" / "sdxl_lora_rescue"))
    assert len(lines) == 1 and re.fullmatch(
        rf"error: saving into {re.escape(str(out))} failed twice \(no space left on the disk; .* free in {re.escape(str(out))}\); "
        rf"the trained weights were saved to ({rescue}/tiny_lora-\d{{8}}-\d{{6}})/tiny_lora-step00000002\.safetensors instead: "
        r"copy them somewhere safe, fix output_dir and resume from there with --resume", lines[0]), lines
    rescued = Path(re.search(rf"saved to ({rescue}/tiny_lora-\d{{8}}-\d{{6}})/", lines[0]).group(1))
    # the weights of step 2, exactly those the uninterrupted run saved at step 2, and the state to resume from
    assert sorted(p.name for p in rescued.iterdir()) == ["tiny_lora-step00000002-state", "tiny_lora-step00000002.safetensors"]
    got, want = lora_tensors(rescued / "tiny_lora-step00000002.safetensors"), lora_tensors(tmp_path / "ref_out" / "tiny_lora-step00000002.safetensors")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    # nothing half-written on the full disk: only the folder itself (the lock is released)
    assert left_behind == ["out"], left_behind
    assert free_at_end is None or free_at_end < 64 * 1024
    assert _digests(train_dir, tiny_single_file) == inputs


@pytest.fixture(scope="module")
def lora_file(_tiny_sdxl_loaded, tmp_path_factory):
    return Path(write_lora(_tiny_sdxl_loaded, tmp_path_factory.mktemp("lora") / "a.safetensors", dim=4, alpha=2.0))


def _tool_cases(model: Path, lora: Path):
    from networks import resize_lora, sdxl_merge_lora
    from tools import inspect_sdxl

    return [
        ("resize_lora", resize_lora, lambda out: ["--model", str(lora), "--save_to", str(out / "small.safetensors"), "--new_rank", "2"],
         "small.safetensors"),
        ("merge LoRAs", sdxl_merge_lora, lambda out: ["--models", str(lora), str(lora), "--ratios", "1", "0.5", "--concat",
                                                      "--save_to", str(out / "both.safetensors")], "both.safetensors"),
        ("merge into a diffusers folder", sdxl_merge_lora,
         lambda out: ["--sd_model", str(model), "--models", str(lora), "--save_to", str(out / "merged")], "merged"),
        ("inspect_sdxl --save_single_file", inspect_sdxl, lambda out: [str(model), "--save_single_file", str(out / "copy.safetensors")],
         "copy.safetensors"),
        ("inspect_sdxl --save_diffusers", inspect_sdxl, lambda out: [str(model), "--save_diffusers", str(out / "copy_diffusers")],
         "copy_diffusers"),
    ]


def test_every_tool_that_writes_safetensors_says_the_disk_is_full_in_one_line(tiny_single_file, lora_file, tmp_path, capsys):
    inputs = _digests(tiny_single_file, lora_file)
    lora_before = read(lora_file)
    with FullDisk(tmp_path / "disk") as disk:
        disk.fill()
        for name, module, argv, target in _tool_cases(tiny_single_file, lora_file):
            capsys.readouterr()
            code = run_cli(module.main, argv(disk.folder))
            captured = capsys.readouterr()
            errors = [line for line in captured.err.splitlines() if line.strip()]
            assert code == 2 and "Traceback" not in captured.err, (name, captured.err[-3000:])
            # a diffusers folder fails on one of its files inside the hidden temporary folder: the line names the folder
            assert len(errors) == 1 and re.fullmatch(
                rf"error: {re.escape(str(disk.folder / target))}: cannot write \(no space left on the disk; .* free in "
                rf"{re.escape(str(disk.folder))}\); free some space or choose another folder, then run again", errors[0]), (name, errors)
            assert disk.user_files() == [], (name, disk.user_files())  # no temporary file or folder left behind
    assert _digests(tiny_single_file, lora_file) == inputs
    assert read(lora_file)[1] == lora_before[1]


def test_a_safetensors_disk_error_outside_the_atomic_writers_is_one_line(tmp_path, capsys):
    from safetensors import SafetensorError

    def main(argv):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    assert run_cli(main, []) == 2
    assert capsys.readouterr().err.strip().startswith("error: a file: cannot write (no space left on the disk")

    def bug(argv):
        raise SafetensorError("Error while deserializing header: HeaderTooLarge")

    with pytest.raises(SafetensorError):  # anything else keeps its traceback
        run_cli(bug, [])
