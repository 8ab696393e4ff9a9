"""Captions are never silently empty: missing and empty captions are counted and named in one notice,
and metadata made on another machine (keys that match no image here) is an error naming the file and
the fix, in the preparation script and in the trainer. No model is loaded by these tests' checks."""
from __future__ import annotations

import json
import shutil

import pytest

from finetune import merge_all_to_metadata, prepare_buckets_latents
from library.errors import UserError
from library.training.config.config_loader import resolve_config
from library.training.loop import Trainer
from tests.training_fixtures import base_config, flat, make_concept_images, write_config


def _trainer(tmp_path, model, train_dir, **overrides) -> Trainer:
    config = write_config(tmp_path / "c.toml", flat(base_config(model, train_dir, tmp_path / "out", **overrides)))
    return Trainer(resolve_config(["--config_file", str(config)]))


def test_missing_and_empty_dreambooth_captions_in_one_notice(tiny_single_file, tmp_path):
    folder = tmp_path / "data" / "2_catwomen"
    make_concept_images(folder, count=5, sizes=[(64, 64)])
    (folder / "img1.caption").unlink()
    (folder / "img2.caption").write_text("")
    (folder / "img3.caption").write_text("\n\n")
    trainer = _trainer(tmp_path, tiny_single_file, tmp_path / "data")
    assert [n for n in trainer.notices if "caption" in n] == [
        f"{folder}: 1 of 5 images have no .caption file (img1.png) and 2 have an empty .caption file (img2.png, img3.png); "
        "using the class tokens 'catwomen' for them"]
    assert [item.caption for item in trainer.items] == ["catwomen, 1girl, black suit", "catwomen", "catwomen", "catwomen",
                                                         "catwomen, 1girl, black suit"]

    # no caption anywhere and no class token to stand in: said plainly, not a silent run on "" captions
    bare = tmp_path / "bare" / "3_"
    make_concept_images(bare, count=2, sizes=[(64, 64)], caption_extension=None)
    trainer = _trainer(tmp_path, tiny_single_file, tmp_path / "bare")
    assert [n for n in trainer.notices if "caption" in n] == [
        f"{bare}: none of its 2 images has a caption (no .caption files with text, and no class token in the folder name): "
        "every image trains on an empty caption; write .caption files next to the images or name the folder "
        "<repeats>_<class tokens>"]


def test_metadata_from_another_machine_is_an_error_naming_the_file(tiny_single_file, tmp_path, capsys):
    here = tmp_path / "here" / "images"
    make_concept_images(here, count=3, sizes=[(64, 64)])
    elsewhere = tmp_path / "other_machine" / "images"  # the same images, merged with --full_path on "another machine"
    shutil.copytree(here, elsewhere)
    meta_clean = tmp_path / "meta_clean.json"
    assert merge_all_to_metadata.main([str(elsewhere), str(meta_clean), "--full_path"]) == 0
    shutil.rmtree(tmp_path / "other_machine")
    with pytest.raises(UserError, match=rf"^{meta_clean}: none of its 3 keys names an image in {here} \(it has "
                                        rf"'{elsewhere}/img0\.png', this folder gives '{here}/img0\.png'\); it was made on another "
                                        r"machine .* re-run finetune/merge_all_to_metadata\.py on this machine"):
        prepare_buckets_latents.main([str(here), str(meta_clean), str(tmp_path / "meta_lat.json"), str(tiny_single_file),
                                      "--full_path"])
    assert not (tmp_path / "meta_lat.json").exists()

    # a meta_lat.json an older version wrote from it: image sizes and buckets, no caption anywhere
    meta_lat = tmp_path / "meta_lat_old.json"
    meta_lat.write_text(json.dumps({f"img{i}": {"image_size": [64, 64], "train_resolution": [64, 64]} for i in range(3)}))
    with pytest.raises(UserError, match=rf"^{meta_lat}: none of its 3 images has a caption or tags; the metadata was probably made "
                                        r"from a meta_clean\.json whose keys are not this machine's image names .* with --full_path "
                                        r"in both or in neither$"):
        _trainer(tmp_path, tiny_single_file, here, in_json=str(meta_lat))

    # partly matching metadata: one notice counting and naming both kinds of gap
    partial = tmp_path / "meta_partial.json"
    partial.write_text(json.dumps({"img0": {"caption": "catwomen"}, "img1": {"caption": ""}, "gone": {"caption": "x"},
                                   "img2": {"tags": "a, b"}}))
    trainer = _trainer(tmp_path, tiny_single_file, here, in_json=str(partial))
    assert [n for n in trainer.notices if str(partial) in n] == [
        f"{partial}: 1 entries have no image in {here} (gone) and 1 images have an empty caption (img1.png)"]


def test_extreme_images_are_named_in_a_notice(tiny_single_file, tmp_path):
    from PIL import Image

    folder = tmp_path / "data" / "1_catwomen"
    make_concept_images(folder, count=2, sizes=[(64, 64)])
    Image.new("RGB", (1, 1), (200, 10, 10)).save(folder / "dot.png")
    Image.new("RGB", (10000, 100), (10, 200, 10)).save(folder / "strip.png")
    trainer = _trainer(tmp_path, tiny_single_file, tmp_path / "data")
    assert [n for n in trainer.notices if "enlarged" in n] == [
        f"{folder}: 2 image(s) are enlarged more than 2x or lose more than half a side to the bucket crop (dot.png 1x1 enlarged "
        "64.0x to 64x64; strip.png 10000x100: the 128x32 crop keeps 4% of its width); use larger or pre-cropped images, "
        "or widen min_bucket_reso/max_bucket_reso"]
