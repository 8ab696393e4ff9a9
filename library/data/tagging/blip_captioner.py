"""BLIP captioning through transformers' BlipForConditionalGeneration, from a local folder only.

As kohya's make_captions.py (which runs the original BLIP code): the image is resized to the
model's square input with bicubic filtering and normalised with CLIP's mean/std; decoding starts
from the prompt "a picture of ", which is not part of the caption; nucleus sampling uses a
repetition penalty of 1.1, beam search none.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from library.data.images import composite
from library.errors import UserError

PROMPT = "a picture of "
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HOW_TO_GET = (
    "get the transformers-format folder 'Salesforce/blip-image-captioning-large' on a connected machine "
    "(e.g. `huggingface-cli download Salesforce/blip-image-captioning-large --local-dir blip-large`) and pass that folder"
)


def check_caption_weights(path: str | None) -> Path:
    """The BLIP folder, or a UserError that says how to get one (nothing is ever downloaded)."""
    if not path:
        raise UserError(f"--caption_weights is required: {HOW_TO_GET}")
    if "://" in path:
        raise UserError(f"--caption_weights {path}: models are never downloaded; {HOW_TO_GET}")
    folder = Path(path)
    if folder.is_file():
        raise UserError(
            f"{folder}: is a file (the original BLIP release's .pth?); this toolkit runs BLIP through transformers: {HOW_TO_GET}"
        )
    if not (folder / "config.json").is_file():
        raise UserError(f"{folder}: not a transformers BLIP folder (no config.json); {HOW_TO_GET}")
    return folder


class BlipCaptioner:
    def __init__(self, folder: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32):
        from transformers import AutoTokenizer, BlipForConditionalGeneration

        folder = check_caption_weights(str(folder))
        try:
            self.model = BlipForConditionalGeneration.from_pretrained(folder, local_files_only=True, dtype=dtype)
            self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as error:
            raise UserError(f"{folder}: cannot load BLIP ({str(error).splitlines()[0]}); {HOW_TO_GET}") from None
        self.model.to(device).eval().requires_grad_(False)
        self.device, self.dtype = device, dtype
        self.image_size = int(self.model.config.vision_config.image_size)
        self.mean, self.std = CLIP_MEAN, CLIP_STD
        processor_file = folder / "preprocessor_config.json"
        if processor_file.is_file():  # a folder's own normalisation wins over BLIP's defaults
            config = json.loads(processor_file.read_text(encoding="utf-8"))
            self.mean = tuple(config.get("image_mean", self.mean))
            self.std = tuple(config.get("image_std", self.std))

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """[3, S, S] float32 normalised tensor."""
        image = composite(image).resize((self.image_size, self.image_size), Image.BICUBIC)
        array = np.asarray(image, dtype=np.float32) / 255.0
        array = (array - np.array(self.mean, np.float32)) / np.array(self.std, np.float32)
        return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))

    @torch.no_grad()
    def caption(self, pixels: torch.Tensor, beam_search: bool, num_beams: int = 1, top_p: float = 0.9,
                min_length: int = 5, max_length: int = 75) -> list[str]:
        batch = pixels.to(self.device, self.dtype)
        prompt = self.tokenizer([PROMPT] * len(batch), return_tensors="pt")
        options = dict(max_length=max_length, min_length=min_length)
        if beam_search:
            options.update(do_sample=False, num_beams=num_beams, repetition_penalty=1.0)
        else:
            options.update(do_sample=True, top_p=top_p, top_k=0, num_beams=1, repetition_penalty=1.1)
        output = self.model.generate(
            pixel_values=batch,
            input_ids=prompt.input_ids.to(self.device),
            attention_mask=prompt.attention_mask.to(self.device),
            **options,
        )
        # The output repeats the prompt minus its final [SEP]; decode only what was generated.
        generated = output[:, prompt.input_ids.shape[1] - 1 :]
        return [text.strip() for text in self.tokenizer.batch_decode(generated, skip_special_tokens=True)]
