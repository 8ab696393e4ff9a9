"""Offline CLIP tokenizers: exact CLIP ids from the shipped vocabulary, model folders and user folders."""
from __future__ import annotations

import shutil

import pytest

from library.errors import UserError
from library.models.tokenizers import (
    load_tokenizers_from_model_folder,
    load_tokenizers_from_user_folder,
    packaged_clip_tokenizers,
)

CAT_IDS = [49406, 320, 1125, 539, 320, 2368, 49407]


def test_packaged_vocabulary_tokenizes_like_clip():
    tok1, tok2 = packaged_clip_tokenizers()
    assert tok1("a photo of a cat").input_ids == CAT_IDS
    assert tok2("a photo of a cat").input_ids == CAT_IDS
    assert len(tok1) == len(tok2) == 49408
    padded1 = tok1("a photo", padding="max_length", max_length=77).input_ids
    padded2 = tok2("a photo", padding="max_length", max_length=77).input_ids
    assert len(padded1) == len(padded2) == 77
    assert padded1[3:6] == [49407, 49407, 49407]  # TE1 pads with <|endoftext|>
    assert padded2[3] == 49407 and set(padded2[4:]) == {0}  # TE2 pads with "!" (id 0), as OpenCLIP
    assert tok1.model_max_length == tok2.model_max_length == 77


def test_single_file_model_uses_packaged_tokenizers(tiny_sdxl):
    assert tiny_sdxl.tokenizer1("a photo of a cat").input_ids == CAT_IDS
    assert tiny_sdxl.tokenizer2("a photo of a cat", padding="max_length", max_length=10).input_ids == CAT_IDS + [0, 0, 0]


def test_model_folder_tokenizers_round_trip(tiny_diffusers_dir):
    tok1, tok2 = load_tokenizers_from_model_folder(tiny_diffusers_dir)
    assert tok1("a photo of a cat").input_ids == CAT_IDS
    assert tok2.pad_token_id == 0 and tok1.pad_token_id == 49407


def test_user_folder_accepts_kohya_cache_names(tiny_diffusers_dir, tmp_path):
    shutil.copytree(tiny_diffusers_dir / "tokenizer", tmp_path / "openai_clip-vit-large-patch14")
    shutil.copytree(tiny_diffusers_dir / "tokenizer_2", tmp_path / "laion_CLIP-ViT-bigG-14-laion2B-39B-b160k")
    tok1, tok2 = load_tokenizers_from_user_folder(tmp_path)
    assert tok1("a photo of a cat").input_ids == CAT_IDS and tok2.pad_token_id == 0


def test_user_folder_missing_second_tokenizer_is_clear(tiny_diffusers_dir, tmp_path):
    shutil.copytree(tiny_diffusers_dir / "tokenizer", tmp_path / "tokenizer")
    with pytest.raises(UserError, match=r"tokenizer_2/.*tokenizer sub-folder"):
        load_tokenizers_from_user_folder(tmp_path)


def test_tokenizer_folder_without_files_is_clear(tmp_path):
    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "tokenizer_2").mkdir()
    with pytest.raises(UserError, match=r"lacks vocab.json, merges.txt"):
        load_tokenizers_from_user_folder(tmp_path)
