"""conditioning_data_dir masks that cannot be used: every mask is checked before any model loads (a
wrong size or a truncated file is one error line at the start, not a crash hours in); a mask that
breaks during the run anyway leaves its image out like a broken image, or stops with a saved state
when too many do."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from library.entry import run_cli
from tests.training_fixtures import base_config, lora_tensors, make_concept_images, write_config


def _pattern(width: int, height: int) -> Image.Image:
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    return Image.fromarray(x.astype(np.uint8))


def _digests(*folders: Path) -> dict:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for folder in folders for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def dataset(tmp_path):
    """Four 100x75 images and a good 100x75 mask for each."""
    images = make_concept_images(tmp_path / "train" / "2_ohwx", count=4, sizes=[(100, 75)])
    masks = tmp_path / "masks"
    masks.mkdir()
    for image in images:
        _pattern(100, 75).save(masks / image.name)
    return tmp_path / "train", masks


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _run(tmp_path, model, train, masks, capsys, **overrides):
    from sdxl_train_network import main

    out = tmp_path / "out"
    config = write_config(tmp_path / "c.toml", base_config(model, train, out, masked_loss=True, conditioning_data_dir=str(masks),
                                                           network_train_unet_only=True, **overrides))
    capsys.readouterr()
    code = run_cli(main, ["--config_file", str(config)])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    errors = [line for line in captured.err.replace("\r", "\n").splitlines() if line.strip() and not re.match(r".*\d+%\|", line)]
    return code, captured.out, errors, out


def test_bad_masks_stop_the_run_before_any_model_loads(tiny_single_file, dataset, tmp_path, capsys, monkeypatch):
    import library.models.sdxl_loader as loader

    monkeypatch.setattr(loader, "load_sdxl", lambda *a, **k: pytest.fail("the model was loaded before the masks were checked"))
    train, masks = dataset
    _pattern(40, 80).save(masks / "img1.png")  # the case: 40x80 for a 100x75 image
    _truncate(masks / "img3.png")
    before = _digests(train, masks)
    code, _, errors, out = _run(tmp_path, tiny_single_file, train, masks, capsys)
    assert code == 2 and len(errors) == 1, errors
    assert re.fullmatch(rf"error: {re.escape(str(masks))}: 2 mask\(s\) cannot be used \(img1\.png: mask is 40x80 but its image is "
                        r"100x75; img3\.png: mask cannot be read \(corrupt or truncated \(.*\)\)\); a mask must be a readable image "
                        r"with its image's aspect ratio \(any size: it is resized like the image\)\. Fix or replace them", errors[0]), errors
    assert _digests(train, masks) == before
    assert not out.exists() or not [p for p in out.iterdir() if not p.name.startswith(".")]


def _break_masks_after_setup(monkeypatch, paths):
    """The masks pass the start-up check, then are cut short before the first training step."""
    from library.training.loop import Trainer

    real_setup = Trainer.setup

    def setup_then_break(self):
        real_setup(self)
        for path in paths:
            _truncate(path)

    monkeypatch.setattr(Trainer, "setup", setup_then_break)


def test_a_mask_breaking_mid_run_leaves_its_image_out(tiny_single_file, dataset, tmp_path, capsys, monkeypatch):
    train, masks = dataset
    _break_masks_after_setup(monkeypatch, [masks / "img2.png"])
    code, out_text, errors, out = _run(tmp_path, tiny_single_file, train, masks, capsys, max_train_steps=4)
    image = train / "2_ohwx" / "img2.png"
    assert code == 0, errors
    skipped = [line for line in out_text.splitlines() + errors if line.startswith(f"skipping {image}: its mask {masks / 'img2.png'}:")]
    assert len(skipped) == 1 and skipped[0].endswith("(left out for the rest of the run)"), out_text
    assert "1 image(s) could not be read during training and were skipped:" in out_text
    assert max(v.abs().max().item() for k, v in lora_tensors(out / "tiny_lora.safetensors").items() if k.endswith("lora_up.weight")) > 0


def test_many_masks_breaking_mid_run_stop_with_a_saved_state(tiny_single_file, dataset, tmp_path, capsys, monkeypatch):
    from library.training.outputs.train_state import find_state, read_progress

    train, masks = dataset
    _break_masks_after_setup(monkeypatch, [masks / "img1.png", masks / "img2.png"])
    code, _, errors, out = _run(tmp_path, tiny_single_file, train, masks, capsys, max_train_steps=8)
    assert code == 2
    assert re.fullmatch(r"error: 2 of 4 training images could not be read during the run \(more than 10%\); the last good state was "
                        r"saved; fix or remove them and resume:", errors[0]), errors
    assert len(errors) == 3 and all(re.fullmatch(rf"  skipped {re.escape(str(train))}/2_ohwx/img[12]\.png: its mask .*", e) for e in errors[1:])
    state = find_state(out)
    progress = read_progress(state)
    assert state.name == f"tiny_lora-step{progress.global_step:08d}-state" and progress.global_step < 8
