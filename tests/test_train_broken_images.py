"""An image that breaks during training (a JPEG cut in half passes the header scan) is skipped for the
rest of the run and listed; the run finishes, resumes bit for bit, and stops with a state only when
more than 10% of the images break."""
from __future__ import annotations

import shutil

import pytest
import torch

from library.errors import UserError
from tests.training_fixtures import base_config, lora_tensors, make_concept_images, write_config


def _half_jpeg(folder, name: str, like) -> None:
    from PIL import Image

    Image.open(like).convert("RGB").save(folder / f"{name}.jpg", quality=95)
    data = (folder / f"{name}.jpg").read_bytes()
    (folder / f"{name}.jpg").write_bytes(data[: len(data) // 2])
    (folder / f"{name}.caption").write_text("catwomen, 1girl, black suit")


@pytest.fixture(scope="module")
def broken_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("broken")
    folder = root / "1_catwomen"
    images = make_concept_images(folder, count=6, sizes=[(64, 64)])
    _half_jpeg(folder, "half", images[0])
    return root


def _main(tmp_path, model, train_dir, name, **overrides) -> int:
    from sdxl_train_network import main

    overrides = {"cache_latents": None, "max_train_steps": 6, **overrides}
    config = base_config(model, train_dir, tmp_path / f"{name}_out", **overrides)
    return main(["--config_file", str(write_config(tmp_path / f"{name}.toml", config))])


def test_half_jpeg_is_skipped_the_run_finishes_and_resumes_exactly(tiny_single_file, broken_dir, tmp_path, capsys):
    assert _main(tmp_path, tiny_single_file, broken_dir, "full", save_state_on_train_end=True) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    half = broken_dir / "1_catwomen" / "half.jpg"
    assert lines[-2] == "1 image(s) could not be read during training and were skipped:"
    assert lines[-1].startswith(f"  skipped {half}: corrupt or truncated (image file is truncated")
    state = torch.load(tmp_path / "full_out" / "tiny_lora-state" / "rng_and_extra.pt", weights_only=True)
    assert [path for path, _ in state["extra"]["broken_images"]] == [str(half)]

    # 3 steps, then resume to 6: the same LoRA as one run
    assert _main(tmp_path, tiny_single_file, broken_dir, "split", max_train_steps=3, save_state_on_train_end=True) == 0
    assert _main(tmp_path, tiny_single_file, broken_dir, "split", resume=str(tmp_path / "split_out"),
                 save_state_on_train_end=True) == 0
    a = lora_tensors(tmp_path / "full_out" / "tiny_lora.safetensors")
    b = lora_tensors(tmp_path / "split_out" / "tiny_lora.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(a[k].abs().sum() > 0 for k in a if "lora_up" in k)


def test_cached_latents_skip_the_broken_image_before_training(tiny_single_file, broken_dir, tmp_path, capsys):
    assert _main(tmp_path, tiny_single_file, broken_dir, "cached", cache_latents=True, max_train_steps=2) == 0
    out = capsys.readouterr().out
    assert "cached latents of 6 images (7 not cached); 0 were fresh; 1 could not be read" in out and "1 image(s) could not be read during training and were skipped" in out


def test_too_many_broken_images_stop_with_a_resumable_state(tiny_single_file, broken_dir, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(broken_dir, data)
    folder = data / "1_catwomen"
    for k in (1, 2):
        _half_jpeg(folder, f"half{k}", folder / "img0.png")  # 3 of 9 images broken: more than 10%
    with pytest.raises(UserError, match=r"(?s)^\d of 9 training images could not be read during the run \(more than 10%\); "
                                        r"the last good state was saved; fix or remove them and resume:\n  skipped .*half"):
        _main(tmp_path, tiny_single_file, data, "many", max_train_steps=12)
    states = list((tmp_path / "many_out").glob("*-state"))
    assert len(states) == 1
    from library.training.outputs.train_state import read_progress

    assert read_progress(states[0]) is not None and all(torch.isfinite(v).all() for v in lora_tensors(states[0] / "network.safetensors").values())
    # the user fixes the images and resumes: they are read again and the run completes
    from PIL import Image

    for k in ("", "1", "2"):
        Image.open(folder / "img0.png").convert("RGB").save(folder / f"half{k}.jpg", quality=95)
    assert _main(tmp_path, tiny_single_file, data, "many", max_train_steps=12, resume=str(tmp_path / "many_out")) == 0
    assert "can be read again; training uses it" in capsys.readouterr().out
    assert (tmp_path / "many_out" / "tiny_lora.safetensors").exists()


def test_processes_share_their_broken_images_so_all_take_the_same_stop_decision(monkeypatch):
    """Each process reads only its own batches; the merged list makes too_many_broken the same on
    every process (a process stopping alone would leave the others in the next all-reduce)."""
    import accelerate.utils
    from types import SimpleNamespace

    from library.training.inputs.latent_source import LatentSource

    sources = [object.__new__(LatentSource) for _ in range(2)]
    for source in sources:
        source.items, source.broken, source._shared_broken = list(range(10)), {}, set()
    sources[0].broken[3] = "truncated"
    sources[1].broken[7] = "deleted"
    calls = {"gather": 0}

    def gather_object(objects):
        calls["gather"] += 1
        return [sorted(source.broken.items()) for source in sources]

    monkeypatch.setattr(accelerate.utils, "gather_object", gather_object)
    news_total = sum(len(set(s.broken) - s._shared_broken) for s in sources)
    accelerator = SimpleNamespace(num_processes=2, device="cpu",
                                  reduce=lambda tensor, reduction: torch.tensor([news_total]))
    assert [s.too_many_broken() for s in sources] == [False, False]  # each alone: one of ten
    snapshot = [dict(s.broken) for s in sources]
    for source in sources:  # both processes call it at the same batch
        source.broken = snapshot[sources.index(source)]
        source.share_broken(accelerator)
    assert sources[0].broken == sources[1].broken == {3: "truncated", 7: "deleted"}
    assert [s.too_many_broken() for s in sources] == [True, True]  # two of ten: both stop at this batch
    accelerator.reduce = lambda tensor, reduction: torch.tensor([0])  # nothing new anywhere: no lists travel
    sources[0].share_broken(accelerator)
    assert calls["gather"] == 2
    single = SimpleNamespace(num_processes=1)
    sources[0].share_broken(single)  # one process: no collective at all
