"""Caption/tag files, tag editing, metadata merging and kohya's cleaning rules, through the scripts."""
from __future__ import annotations

import json

import pytest

from data_fixtures import gradient_image, write_image
from finetune import clean_captions_and_tags, edit_tags, merge_all_to_metadata, merge_captions_to_metadata, merge_dd_tags_to_metadata
from library.data.captions import caption_path, read_caption
from library.data.cleaning import clean_caption, clean_tags
from library.data.tags import TagEdit, split_tags, tag_frequency, underscore_to_space
from library.errors import UserError


@pytest.fixture
def dataset(tmp_path):
    folder = tmp_path / "imgs"
    for i, name in enumerate(["a.png", "b.jpg", "c.webp"]):
        write_image(folder / name, gradient_image(16, 16, seed=i))
    (folder / "a.caption").write_text("a girl with a hat\nsecond line ignored\n", encoding="utf-8")
    (folder / "b.caption").write_text("\ufeffa dog on grass\n", encoding="utf-8")  # BOM tolerated
    (folder / "a.txt").write_text("1girl, long_hair, hat\n", encoding="utf-8")
    (folder / "c.txt").write_text("landscape, tree\n", encoding="utf-8")
    return folder


def test_read_caption_first_line(dataset):
    assert read_caption(dataset / "a.caption") == "a girl with a hat"
    assert read_caption(dataset / "b.caption") == "a dog on grass"
    assert read_caption(dataset / "c.caption") is None
    assert caption_path(dataset / "x.y.png", "txt").name == "x.y.txt"


def test_merge_all_to_metadata_reports_missing_files(dataset, capsys):
    out = dataset / "meta_clean.json"
    assert merge_all_to_metadata.main([str(dataset), str(out)]) == 0
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data == {
        "a": {"caption": "a girl with a hat", "tags": "1girl, long_hair, hat"},
        "b": {"caption": "a dog on grass"},
        "c": {"tags": "landscape, tree"},
    }
    printed = capsys.readouterr().out
    assert "caption: 2 merged, 1 missing" in printed and "c.caption" in printed
    assert "tags: 2 merged, 1 missing" in printed and "b.txt" in printed
    assert "only the first line used" in printed and "a.caption" in printed


def test_two_step_merge_and_full_path(dataset):
    meta = dataset / "meta_cap.json"
    merge_captions_to_metadata.main([str(dataset), str(meta), "--caption_extention", ".caption"])
    final = dataset / "meta_final.json"
    merge_dd_tags_to_metadata.main([str(dataset), str(final), "--in_json", str(meta)])
    data = json.loads(final.read_text(encoding="utf-8"))
    assert data["a"] == {"caption": "a girl with a hat", "tags": "1girl, long_hair, hat"}
    full = dataset / "meta_full.json"
    merge_dd_tags_to_metadata.main([str(dataset), str(full), "--full_path"])
    assert json.loads(full.read_text(encoding="utf-8"))[str(dataset / "c.webp")] == {"tags": "landscape, tree"}


def test_duplicate_stems_are_an_error(dataset):
    write_image(dataset / "a.jpg", gradient_image(8, 8))
    with pytest.raises(UserError, match="share the metadata key 'a'"):
        merge_all_to_metadata.main([str(dataset), str(dataset / "m.json")])
    assert not (dataset / "m.json").exists()


def test_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="no images found"):
        merge_all_to_metadata.main([str(tmp_path), str(tmp_path / "m.json")])


def test_tag_helpers():
    assert split_tags(" a,b ,, c,") == ["a", "b", "c"]
    assert underscore_to_space("long_hair") == "long hair"
    assert underscore_to_space("^_^") == "^_^" and underscore_to_space("||_||") == "||_||"
    edit = TagEdit(add=["WeThinkIn", "sks"], remove={"hat"}, replace={"long hair": "very long hair"}, dedupe=True)
    assert edit.apply(["1girl", "sks", "long_hair", "hat", "1girl"]) == ["WeThinkIn", "sks", "1girl", "very long hair"]
    assert TagEdit(add=["x"], append=True).apply(["x", "a"]) == ["a", "x"]
    assert tag_frequency([["a", "b"], ["a", "a"], ["b_c"]]) == {"a": 2, "b": 1, "b c": 1}


def test_edit_tags_script(dataset, capsys):
    pollution = dataset.parent / "concept_tags.txt"
    pollution.write_text("hat\nlong hair, tree\n", encoding="utf-8")
    argv = [str(dataset), "--add", "WeThinkIn", "--remove_file", str(pollution), "--replace", "1girl=solo girl",
            "--create_missing", "--frequency"]
    assert edit_tags.main(argv + ["--dry_run"]) == 0
    dry = capsys.readouterr().out
    assert "-1girl, long_hair, hat" in dry and "+WeThinkIn, solo girl" in dry
    assert (dataset / "a.txt").read_text(encoding="utf-8") == "1girl, long_hair, hat\n"  # nothing written
    assert not (dataset / "b.txt").exists()
    assert edit_tags.main(argv) == 0
    out = capsys.readouterr().out
    assert (dataset / "a.txt").read_text(encoding="utf-8") == "WeThinkIn, solo girl\n"
    assert (dataset / "b.txt").read_text(encoding="utf-8") == "WeThinkIn\n"
    assert (dataset / "c.txt").read_text(encoding="utf-8") == "WeThinkIn, landscape\n"
    assert "files changed: 2, created: 1, unchanged: 0" in out
    assert "3  WeThinkIn" in out and "1  landscape" in out
    # Idempotent: a second run changes nothing; no temporary files are left behind.
    edit_tags.main(argv)
    assert "files changed: 0, created: 0, unchanged: 3" in capsys.readouterr().out
    assert not [p for p in dataset.iterdir() if p.name.startswith(".")]


def test_edit_tags_keeps_extra_lines_and_appends(dataset):
    (dataset / "c.txt").write_text("landscape\nnotes kept here\n", encoding="utf-8")
    edit_tags.main([str(dataset), "--add", "sks", "--append"])
    assert (dataset / "c.txt").read_text(encoding="utf-8") == "landscape, sks\nnotes kept here\n"


def test_clean_tags_kohya_rules():
    assert clean_tags("1girl, long_hair, shirt, white_shirt, ^_^")[0] == "1girl, long hair, white shirt, ^_^"
    # Several people: several eye colours and hair colours cannot be attributed -> dropped;
    # the shared hair length is kept.
    tags = "2girls, long hair, blonde hair, black hair, blue eyes, red eyes, smile"
    assert clean_tags(tags)[0] == "2girls, long hair, smile"
    assert clean_tags("1girl, smile, rating:safe")[0] == "1girl, smile"


def test_clean_caption_kohya_rules():
    assert clean_caption("a cartoon drawing of an anime woman with a young lady") == "a drawing of an girl with a girl"
    assert clean_caption("two anime women and a person") == "two girls and a girl"


def test_clean_script(dataset, tmp_path, capsys):
    meta = tmp_path / "in.json"
    meta.write_text(json.dumps({"x": {"caption": "an anime woman", "tags": "1girl, hair_ornament, red hair ornament"}}))
    out = tmp_path / "out.json"
    assert clean_captions_and_tags.main([str(meta), str(out)]) == 0
    assert json.loads(out.read_text()) == {"x": {"caption": "an girl", "tags": "1girl, red hair ornament"}}
    assert "tags changed: 1, captions changed: 1" in capsys.readouterr().out
    # kohya's old three-argument form still works.
    out2 = tmp_path / "out2.json"
    clean_captions_and_tags.main([str(dataset), str(meta), str(out2)])
    assert json.loads(out2.read_text()) == json.loads(out.read_text())
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        clean_captions_and_tags.main([str(bad), str(out)])
