"""make_captions.py on a tiny BLIP built from a config (no download), with a controlled decoder."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from data_fixtures import gradient_image, write_broken_files, write_image
from finetune import make_captions
from library.data.tagging.blip_captioner import BlipCaptioner
from library.errors import UserError

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "picture", "of", "cat", "dog", "on", "the", "grass", "[DEC]"]
IDS = {w: i for i, w in enumerate(WORDS)}


def write_tiny_blip(folder, preferred: list[str] | None = None, seed: int = 0):
    """A 2-layer BLIP with a BERT tokenizer. With `preferred`, the decoder ignores its input and always
    ranks those tokens first, in that order, so the generated text is known in advance."""
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration

    text = dict(vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=64, bos_token_id=IDS["[DEC]"], eos_token_id=IDS["[SEP]"], sep_token_id=IDS["[SEP]"],
                pad_token_id=IDS["[PAD]"])
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8)
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(BlipConfig(text_config=text, vision_config=vision, projection_dim=32)).eval()
    if preferred:
        head = model.text_decoder.cls.predictions
        bias = torch.full((len(WORDS),), -20.0)
        for rank, word in enumerate(preferred):
            bias[IDS[word]] = 10.0 - rank
        with torch.no_grad():
            head.decoder.weight.zero_()
            head.decoder.bias.copy_(bias)
            head.bias.copy_(bias)
    model.save_pretrained(folder)
    BertTokenizer(vocab=IDS, bos_token="[DEC]").save_pretrained(folder)  # as BLIP's own tokenizer
    return folder


@pytest.fixture(scope="module")
def controlled_blip(tmp_path_factory):
    return write_tiny_blip(tmp_path_factory.mktemp("blip_controlled"), preferred=["[SEP]", "cat", "dog"])


@pytest.fixture
def folder(tmp_path):
    images = tmp_path / "imgs"
    for i in range(3):
        write_image(images / f"img{i}.png", gradient_image(40 + 10 * i, 30, seed=i))
    return images


def test_min_and_max_length_on_a_controlled_decoder(folder, controlled_blip, capsys):
    # [SEP] ranks first, so generation stops as soon as min_length (prompt included) allows:
    # "[DEC] a picture of" is 4 tokens, so min_length 6 forces exactly two "cat" tokens.
    assert make_captions.main([str(folder), "--caption_weights", str(controlled_blip), "--beam_search", "--num_beams", "2",
                               "--min_length", "6", "--max_length", "20", "--batch_size", "2", "--debug"]) == 0
    assert [(folder / f"img{i}.caption").read_text(encoding="utf-8") for i in range(3)] == ["cat cat\n"] * 3
    out = capsys.readouterr().out
    assert "images: 3, captioned: 3, skipped: 0" in out and "img0.png: cat cat" in out


def test_max_length_caps_the_caption(folder, tmp_path):
    blip = write_tiny_blip(tmp_path / "blip_cat", preferred=["cat", "dog"])
    make_captions.main([str(folder), "--caption_weights", str(blip), "--beam_search", "--min_length", "5",
                        "--max_length", "8", "--caption_extention", "txt"])
    assert (folder / "img1.txt").read_text(encoding="utf-8") == "cat cat cat cat\n"  # 4 prompt tokens + 4 generated


def test_random_model_matches_direct_transformers_call(folder, tmp_path):
    blip = write_tiny_blip(tmp_path / "blip_random", seed=5)
    make_captions.main([str(folder), "--caption_weights", str(blip), "--beam_search", "--num_beams", "3", "--max_length", "12"])
    from PIL import Image
    from transformers import AutoTokenizer, BlipForConditionalGeneration

    model = BlipForConditionalGeneration.from_pretrained(blip).eval()
    tokenizer = AutoTokenizer.from_pretrained(blip)
    image = Image.open(folder / "img2.png").convert("RGB").resize((32, 32), Image.BICUBIC)
    array = (np.asarray(image, np.float32) / 255 - [0.48145466, 0.4578275, 0.40821073]) / [0.26862954, 0.26130258, 0.27577711]
    pixels = torch.from_numpy(array.astype(np.float32).transpose(2, 0, 1))[None]
    prompt = tokenizer(["a picture of "], return_tensors="pt")
    ids = model.generate(pixel_values=pixels, input_ids=prompt.input_ids, attention_mask=prompt.attention_mask,
                         num_beams=3, max_length=12, min_length=5, do_sample=False)
    assert ids[0, 1:4].tolist() == [IDS["a"], IDS["picture"], IDS["of"]]
    text = tokenizer.decode(ids[0, 4:], skip_special_tokens=True)
    assert len(text.split()) >= 3  # a real multi-word caption, not an empty string
    assert (folder / "img2.caption").read_text(encoding="utf-8") == text.strip() + "\n"


def test_sampling_is_seeded_and_broken_files_skipped(folder, tmp_path, capsys):
    blip = write_tiny_blip(tmp_path / "blip_sample", seed=5)
    write_broken_files(folder)
    make_captions.main([str(folder), "--caption_weights", str(blip), "--max_length", "15", "--max_data_loader_n_workers", "2"])
    first = [(folder / f"img{i}.caption").read_text(encoding="utf-8") for i in range(3)]
    make_captions.main([str(folder), "--caption_weights", str(blip), "--max_length", "15"])
    assert [(folder / f"img{i}.caption").read_text(encoding="utf-8") for i in range(3)] == first
    out = capsys.readouterr().out
    assert "captioned: 3, skipped: 5" in out and "empty.png: empty file" in out
    assert sorted(p.name for p in folder.glob("*.caption")) == ["img0.caption", "img1.caption", "img2.caption"]


def test_offline_errors(folder, tmp_path):
    with pytest.raises(UserError, match="required.*blip-image-captioning-large"):
        make_captions.main([str(folder)])
    pth = tmp_path / "model_large_caption.pth"
    pth.write_bytes(b"\0")
    with pytest.raises(UserError, match="original BLIP release"):
        make_captions.main([str(folder), "--caption_weights", str(pth)])
    with pytest.raises(UserError, match="never downloaded"):
        make_captions.main([str(folder), "--caption_weights", "https://example.com/model_large_caption.pth"])
    with pytest.raises(UserError, match="no config.json"):
        BlipCaptioner(tmp_path)
