"""WD14 tagging: pixel-exact preprocessing, and tag choice/order/options on fixed model outputs."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from data_fixtures import gradient_image, write_broken_files, write_constant_tagger, write_image
from finetune import tag_images_by_wd14_tagger as tagger_script
from library.data.tagging.wd14_labels import parse_tag_replacement
from library.data.tagging.wd14_tagger import preprocess_for_tagger
from library.errors import UserError

LABELS = [
    ("general", 9), ("sensitive", 9), ("questionable", 9), ("explicit", 9),
    ("1girl", 0), ("long_hair", 0), ("^_^", 0), ("(o)_(o)", 0), ("smile", 0), ("hat", 0), ("red_eyes", 0),
    ("hatsune_miku_(vocaloid)", 4), ("alice_(wonderland)", 4),
]
PROBS = [0.1, 0.7, 0.15, 0.05, 0.99, 0.375, 0.5, 0.6, 0.374, 0.8, 0.9, 0.9, 0.5]


@pytest.fixture
def folder(tmp_path):
    images = tmp_path / "imgs"
    write_image(images / "one.png", gradient_image(20, 12, seed=1))
    write_image(images / "two.jpg", gradient_image(12, 20, seed=2))
    return images


@pytest.fixture
def model_dir(tmp_path):
    return write_constant_tagger(tmp_path / "wd-v1-4-moat-tagger-v2", PROBS, LABELS)


def test_preprocessing_is_pixel_exact():
    pixels = np.array(
        [[[10, 20, 30, 255], [0, 0, 0, 0], [200, 100, 50, 255], [1, 2, 3, 255]],
         [[9, 8, 7, 255], [60, 70, 80, 255], [0, 0, 0, 0], [250, 240, 230, 255]]], dtype=np.uint8)
    out = preprocess_for_tagger(Image.fromarray(pixels, "RGBA"), 4)
    assert out.dtype == np.float32 and out.shape == (4, 4, 3)
    white = [255.0, 255.0, 255.0]
    assert out[0].tolist() == [white] * 4 and out[3].tolist() == [white] * 4  # 1 row of padding above and below
    assert out[1].tolist() == [[30, 20, 10], white, [50, 100, 200], [3, 2, 1]]  # BGR, transparent -> white
    assert out[2].tolist() == [[7, 8, 9], [80, 70, 60], white, [230, 240, 250]]


def test_preprocessing_pads_centred_then_resizes_bicubic():
    image = gradient_image(6, 3, seed=4)
    out = preprocess_for_tagger(image, 12)
    padded = np.full((6, 6, 3), 255, np.uint8)
    padded[1:4] = np.asarray(image)  # (6 - 3) // 2 = 1 row above, 2 below
    expected = np.asarray(Image.fromarray(padded).resize((12, 12), Image.BICUBIC), dtype=np.float32)[:, :, ::-1]
    assert np.array_equal(out, expected)


def test_caption_for_fixed_probabilities_with_all_options(folder, model_dir, capsys):
    argv = [str(folder), "--model_dir", str(model_dir), "--remove_underscore", "--general_threshold", "0.375",
            "--character_threshold", "0.5", "--undesired_tags", "hat", "--tag_replacement", "red_eyes,crimson eyes",
            "--character_tags_first", "--use_rating_tags_as_last_tag", "--always_first_tags", "1girl",
            "--batch_size", "2", "--frequency_tags"]
    assert tagger_script.main(argv) == 0
    expected = "1girl, alice (wonderland), hatsune miku (vocaloid), long hair, ^_^, (o)_(o), crimson eyes, sensitive\n"
    assert (folder / "one.txt").read_text(encoding="utf-8") == expected
    assert (folder / "two.txt").read_text(encoding="utf-8") == expected
    out = capsys.readouterr().out
    assert "images: 2, tagged: 2, skipped: 0" in out and "  crimson eyes: 2" in out and "input 8px" in out


def test_defaults_keep_kohya_order_and_underscores(folder, model_dir):
    tagger_script.main([str(folder), "--model_dir", str(model_dir)])
    # thresh 0.35: float32 0.375 and 0.374 pass, rating not written, index order, characters last.
    assert (folder / "one.txt").read_text(encoding="utf-8") == (
        "1girl, long_hair, ^_^, (o)_(o), smile, hat, red_eyes, hatsune_miku_(vocaloid), alice_(wonderland)\n"
    )
    tagger_script.main([str(folder), "--model_dir", str(model_dir), "--thresh", "0.6", "--character_tag_expand",
                        "--use_rating_tags", "--caption_extension", ".tags", "--always_first_tags", "red_eyes,hat"])
    assert (folder / "one.tags").read_text(encoding="utf-8") == "hat, red_eyes, sensitive, 1girl, (o)_(o), hatsune_miku, vocaloid\n"


def test_append_tags_and_output_path(folder, model_dir, tmp_path):
    (folder / "one.txt").write_text("sks, 1girl\n", encoding="utf-8")
    tagger_script.main([str(folder), "--model_dir", str(model_dir), "--thresh", "0.8", "--append_tags"])
    assert (folder / "one.txt").read_text(encoding="utf-8") == "sks, 1girl, hat, red_eyes, hatsune_miku_(vocaloid)\n"  # float32 0.8 >= 0.8
    out_json = tmp_path / "tags.json"
    tagger_script.main([str(folder), "--model_dir", str(model_dir), "--thresh", "0.95", "--output_path", str(out_json)])
    assert json.loads(out_json.read_text()) == {
        str(folder / "one.png"): {"tags": "1girl", "image_size": [20, 12]},
        str(folder / "two.jpg"): {"tags": "1girl", "image_size": [12, 20]},
    }
    out_jsonl = tmp_path / "tags.jsonl"
    tagger_script.main([str(folder), "--model_dir", str(model_dir), "--thresh", "0.95", "--output_path", str(out_jsonl)])
    lines = [json.loads(line) for line in out_jsonl.read_text().splitlines()]
    assert lines[0] == {"image_path": str(folder / "one.png"), "caption": "1girl", "image_size": [20, 12]}
    # With --output_path the caption files are left alone.
    assert (folder / "two.txt").read_text(encoding="utf-8") == "1girl, hat, red_eyes, hatsune_miku_(vocaloid)\n"


def test_kohya_model_layout_fixed_batch_and_broken_files(folder, tmp_path, capsys):
    root = tmp_path / "wd14_tagger_model"
    write_constant_tagger(root / "SmilingWolf_wd-v1-4-moat-tagger-v2", PROBS, LABELS, batch=1)
    expected = write_broken_files(folder)
    with pytest.warns(UserWarning, match="fixed at 1"):
        code = tagger_script.main([str(folder), "--model_dir", str(root), "--onnx", "--repo_id",
                                   "SmilingWolf/wd-v1-4-moat-tagger-v2", "--batch_size", "4", "--max_data_loader_n_workers", "2"])
    assert code == 0
    out = capsys.readouterr().out
    assert "images: 7, tagged: 2, skipped: 5" in out
    for name, fragment in expected.items():
        assert any(name in line and fragment in line for line in out.splitlines())
    assert sorted(p.name for p in folder.glob("*.txt")) == ["one.txt", "two.txt"]
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]


def test_offline_errors(folder, tmp_path):
    with pytest.raises(UserError, match="never downloads"):
        tagger_script.main([str(folder), "--model_dir", str(tmp_path), "--force_download"])
    with pytest.raises(UserError, match="no model.onnx.*never downloaded"):
        tagger_script.main([str(folder), "--model_dir", str(tmp_path / "nowhere")])
    with pytest.raises(UserError, match="source,target"):
        parse_tag_replacement("a;b")
    assert parse_tag_replacement(r"a\,b,c;d,e\;f") == {"a,b": "c", "d": "e;f"}
