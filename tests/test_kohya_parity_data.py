"""Captions and DreamBooth folders as kohya sd-scripts reads them (issue 15).

Expected values are written out by hand from kohya's train_util.BaseDataset.process_caption and
config_util.generate_dreambooth_subsets_config_by_subdirs.
"""
from __future__ import annotations

import hashlib
import random

import numpy as np
import pytest

from data_fixtures import gradient_image, write_image
from library.data.caption_processing import CaptionOptions, process_caption
from library.training.config.dataset_config import parse_dreambooth_folder
from library.training.inputs.train_items import metadata_caption
from training_fixtures import base_config, write_config


def test_dreambooth_folder_names_as_kohya():
    assert parse_dreambooth_folder("10_ohwx_woman") == (10, "ohwx_woman")
    assert parse_dreambooth_folder("3_sks dog") == (3, "sks dog")
    assert parse_dreambooth_folder("5") == (5, "")  # kohya: repeats without class tokens
    assert parse_dreambooth_folder("0_skip") is None and parse_dreambooth_folder("logs") is None


def test_text_is_left_as_written_without_shuffle_warmup_or_tag_dropout():
    caption = "ohwx woman ||| red dress,blue sky"
    assert process_caption(caption, CaptionOptions(keep_tokens_separator="|||", keep_tokens=1), random.Random(0)) == caption
    assert process_caption("a;b", CaptionOptions(caption_separator=";"), random.Random(0)) == "a;b"


def test_rejoined_with_comma_space_whatever_the_separator():
    out = process_caption("a; b;c ;d", CaptionOptions(caption_separator=";", shuffle_caption=True, keep_tokens=1), random.Random(1))
    assert out.startswith("a, ") and sorted(out.split(", ")) == ["a", "b", "c", "d"]
    fixed = CaptionOptions(keep_tokens_separator="|||", token_warmup_step=100, token_warmup_min=1)
    # fixed part "x, y", flex "p, q, r" cut to 1 tag at step 0, fixed tail "z": joined by ", "
    assert process_caption("x,y ||| p,q,r ||| z", fixed, random.Random(0)) == "x, y, p, z"


def test_secondary_separator_becomes_caption_separator():
    assert process_caption("black;;;suit, mask", CaptionOptions(secondary_separator=";;;"), random.Random(0)) == "black,suit, mask"
    shuffled = process_caption("black;;;suit, mask", CaptionOptions(secondary_separator=";;;", shuffle_caption=True), random.Random(0))
    assert shuffled in ("black,suit, mask", "mask, black,suit")  # the joined pair moved as one tag


def test_wildcards_expand_after_prefix_and_suffix():
    options = CaptionOptions(enable_wildcard=True, caption_prefix="{photo|painting} of", caption_suffix="{{hd}}")
    outputs = {process_caption("a {red|blue} cat", options, random.Random(seed)) for seed in range(40)}
    assert outputs == {f"{kind} of a {colour} cat {{hd}}" for kind in ("photo", "painting") for colour in ("red", "blue")}
    lines = {process_caption("one\ntwo\n\nthree", CaptionOptions(enable_wildcard=True), random.Random(s)) for s in range(40)}
    assert lines == {"one", "two", "three"}
    # without wildcards kohya keeps a multi-line (metadata) caption whole, prefix before it and suffix after it
    assert process_caption("one\ntwo", CaptionOptions(caption_prefix="p", caption_suffix="s"), random.Random(0)) == "p one\ntwo s"


def test_wildcard_captions_keep_every_line(tmp_path):
    from library.training.config.dataset_config import DatasetSpec, SubsetSpec
    from library.training.inputs.train_items import build_items

    folder = tmp_path / "1_cat"
    write_image(folder / "a.png", gradient_image(32, 32))
    (folder / "a.caption").write_text("a red cat\n\n  a blue cat  \n", encoding="utf-8")
    spec = DatasetSpec(resolution=(32, 32), subsets=[SubsetSpec(image_dir=str(folder), enable_wildcard=True)])
    from library.data.images import SkipLog

    assert build_items([spec], SkipLog(), [])[0].caption == "a red cat\na blue cat"
    spec.subsets[0].enable_wildcard = False
    assert build_items([spec], SkipLog(), [])[0].caption == "a red cat"
    entry = {"caption": "one\ntwo", "tags": "x, y"}
    assert metadata_caption(entry, ",", wildcard=True) == "one, x, y\ntwo, x, y"  # tags on every line, as kohya


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def test_tool_text_encoder_caches_are_the_trainers(tmp_path, tiny_single_file, monkeypatch, capsys):
    from sdxl_train_network import main as train_main
    from tools import cache_text_encoder_outputs

    train = tmp_path / "train"
    write_image(train / "10_ohwx_woman" / "a.png", gradient_image(64, 64, seed=1))
    write_image(train / "10_ohwx_woman" / "b.png", gradient_image(64, 64, seed=2))
    (train / "10_ohwx_woman" / "b.caption").write_text("red;;;dress\n", encoding="utf-8")
    config = base_config(tiny_single_file, train, tmp_path / "out", max_train_steps=1, train_batch_size=1,
                         network_train_unet_only=True, cache_text_encoder_outputs_to_disk=True,
                         caption_prefix="photo of", secondary_separator=";;;")
    path = write_config(tmp_path / "train.toml", config)
    assert cache_text_encoder_outputs.main(["--config_file", str(path)]) == 0
    for stem, text in (("a", "photo of ohwx_woman"), ("b", "photo of red,dress")):
        with np.load(train / "10_ohwx_woman" / f"{stem}_te_outputs.npz") as npz:
            assert str(npz["caption_sha256"]) == sha(text)

    import library.training.inputs.text_conditioning as text_conditioning

    calls = []
    real = text_conditioning.encode_texts
    monkeypatch.setattr(text_conditioning, "encode_texts", lambda *a, **k: calls.extend(a[2]) or real(*a, **k))
    assert train_main(["--config_file", str(path)]) == 0
    assert calls == []  # every caption the trainer needed was in the tool's files


@pytest.mark.parametrize("name", ["10_ohwx_woman"])
def test_trainer_class_token_fallback(tmp_path, name):
    from library.data.images import SkipLog
    from library.training.config.config_loader import resolve_config
    from library.training.config.dataset_config import dataset_specs
    from library.training.inputs.train_items import build_items

    write_image(tmp_path / "train" / name / "a.png", gradient_image(32, 32))
    args = resolve_config(["--train_data_dir", str(tmp_path / "train"), "--resolution", "32,32",
                           "--pretrained_model_name_or_path", "m", "--output_dir", "o"]).args
    items = build_items(dataset_specs(args), SkipLog(), [])
    assert [item.caption for item in items] == ["ohwx_woman"] and items[0].subset.num_repeats == 10


def test_trainer_validates_bucket_options_as_kohya(tmp_path):
    from library.data.images import SkipLog
    from library.errors import UserError
    from library.training.config.dataset_config import DatasetSpec, SubsetSpec
    from library.training.inputs.train_items import build_items

    write_image(tmp_path / "1_x" / "a.png", gradient_image(96, 64))

    def build(**values):
        spec = DatasetSpec(resolution=(128, 128), enable_bucket=True, subsets=[SubsetSpec(image_dir=str(tmp_path / "1_x"))])
        for key, value in values.items():
            setattr(spec, key, value)
        notices = []
        items = build_items([spec], SkipLog(), notices)
        return spec, items, notices

    with pytest.raises(UserError, match="bucket_reso_steps = 48: must be a positive multiple of 32"):
        build(bucket_reso_steps=48, min_bucket_reso=96, max_bucket_reso=192)
    spec, items, notices = build(bucket_reso_steps=32, min_bucket_reso=100, max_bucket_reso=200)
    assert (spec.min_bucket_reso, spec.max_bucket_reso) == (96, 224)  # kohya: min rounded down, max up
    assert any("min_bucket_reso 100" in n for n in notices) and any("max_bucket_reso 200" in n for n in notices)
    assert items[0].bucket == (160, 96)  # 96x64 (3:2) -> the 3:2 bucket of the 128x128 area, steps 32, min 96
    with pytest.raises(UserError, match="min_bucket_reso = 160 is larger than the shorter side of resolution 128,128"):
        build(bucket_reso_steps=32, min_bucket_reso=160, max_bucket_reso=256)
    with pytest.raises(UserError, match="max_bucket_reso = 96 is smaller than the longer side of resolution 128,128"):
        build(bucket_reso_steps=32, min_bucket_reso=64, max_bucket_reso=96)
    spec, _, notices = build(enable_bucket=False, bucket_reso_steps=48, min_bucket_reso=500)
    assert not any("_bucket_reso" in n for n in notices)  # bucket options are unused (and unchecked, as kohya) without enable_bucket


def test_notices_for_caption_differences(tmp_path):
    from library.data.images import SkipLog
    from library.training.config.dataset_config import DatasetSpec, SubsetSpec
    from library.training.inputs.train_items import build_items

    write_image(tmp_path / "1_x" / "a.png", gradient_image(32, 32))
    (tmp_path / "1_x" / "a.caption").write_text("red, , dress,\nblue dress", encoding="utf-8")
    subset = SubsetSpec(image_dir=str(tmp_path / "1_x"), shuffle_caption=True)
    notices = []
    build_items([DatasetSpec(resolution=(32, 32), subsets=[subset])], SkipLog(), notices)
    assert any("1 caption(s) contain empty tags" in n for n in notices)
    assert process_caption("red, , dress,", subset, random.Random(0)).count(",") == 1  # ours: no empty tag
    subset = SubsetSpec(image_dir=str(tmp_path / "1_x"), enable_wildcard=True, caption_prefix="photo of")
    notices = []
    build_items([DatasetSpec(resolution=(32, 32), subsets=[subset])], SkipLog(), notices)
    assert any("multi-line wildcard caption(s) with caption_prefix" in n for n in notices)


def test_regularisation_balance_as_kohya_per_dataset():
    """Worked by hand from kohya's DreamBoothDataset: whole images with their repeats until the
    training samples are reached (it may pass them), then one more repeat per image in order."""
    from types import SimpleNamespace

    from library.training.inputs.batch_plan import balanced_reg_repeats, expanded_indices

    assert balanced_reg_repeats([(0, 2), (1, 2)], 6) == {0: 3, 1: 3}  # fewer reg: repeats grow in turn
    assert balanced_reg_repeats([(0, 2), (1, 2), (2, 2)], 3) == {0: 2, 1: 2}  # more reg: passes 3, image 2 unused
    assert balanced_reg_repeats([(0, 1)], 30) == {0: 30}
    assert balanced_reg_repeats([(0, 5)], 0) == {}  # no training image in the dataset: no reg image

    def item(dataset, repeats, is_reg):
        return SimpleNamespace(dataset_index=dataset, is_reg=is_reg, subset=SimpleNamespace(num_repeats=repeats))

    # dataset 0: 2 training samples, one reg image; dataset 1: 10 training samples, two reg images
    items = [item(0, 2, False), item(0, 1, True), item(1, 10, False), item(1, 1, True), item(1, 1, True)]
    counts = {i: expanded_indices(items).count(i) for i in range(len(items))}
    assert counts == {0: 2, 1: 2, 2: 10, 3: 5, 4: 5}  # a global balance would give 12 reg samples spread over all three
