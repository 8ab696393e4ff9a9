"""Running a SmilingWolf WD14 tagger (model.onnx + selected_tags.csv) with onnxruntime, offline.

Preprocessing as the reference tagger: transparent pixels composited on white, padded to a white
square (centred), resized with bicubic filtering to the model's input size, channels in BGR
order, float32 values 0-255, NHWC.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from library.data.images import composite
from library.errors import UserError

MODEL_FILE, LABEL_FILE = "model.onnx", "selected_tags.csv"
DEFAULT_REPO_ID = "SmilingWolf/wd-v1-4-convnext-tagger-v2"


def preprocess_for_tagger(image: Image.Image, size: int) -> np.ndarray:
    """[size, size, 3] float32 BGR 0-255 from an RGB or RGBA image."""
    image = composite(image)
    side = max(image.size)
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(image, ((side - image.size[0]) // 2, (side - image.size[1]) // 2))
    if side != size:
        square = square.resize((size, size), Image.BICUBIC)
    return np.ascontiguousarray(np.asarray(square, dtype=np.float32)[:, :, ::-1])


def find_model_folder(model_dir: str | os.PathLike, repo_id: str) -> Path:
    """model_dir itself (as the seed tutorial passes it) or kohya's model_dir/<repo_id with _>/."""
    model_dir = Path(model_dir)
    candidates = [model_dir, model_dir / repo_id.replace("/", "_")]
    for folder in candidates:
        if (folder / MODEL_FILE).is_file():
            return folder
    raise UserError(
        f"{model_dir}: no {MODEL_FILE} in {candidates[0]} or {candidates[1]}; models are never downloaded -- "
        f"get {MODEL_FILE} and {LABEL_FILE} of {repo_id} on a connected machine and put them in {candidates[0]}"
    )


class OnnxTagger:
    """An onnxruntime session with the input geometry read from the model."""

    def __init__(self, model_path: Path, batch_size: int):
        import onnxruntime as ort

        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        try:
            self.session = ort.InferenceSession(str(model_path), providers=providers)
        except Exception as error:  # onnxruntime raises its own exception types
            raise UserError(f"{model_path}: cannot be loaded by onnxruntime ({str(error).splitlines()[0]})") from None
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        shape = list(model_input.shape)
        if len(shape) != 4 or shape[3] != 3 or not isinstance(shape[1], int):
            raise UserError(f"{model_path}: expected an NHWC image input [batch, size, size, 3], got {shape}")
        self.image_size = shape[1]
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        self.batch_size = batch_size
        if self.fixed_batch is not None and self.fixed_batch != batch_size:
            warnings.warn(f"{model_path}: the model's batch size is fixed at {self.fixed_batch}; --batch_size {batch_size} is ignored")
            self.batch_size = self.fixed_batch

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        count = len(batch)
        if self.fixed_batch is not None and count < self.fixed_batch:  # pad the last, shorter batch
            padding = np.zeros((self.fixed_batch - count,) + batch.shape[1:], dtype=np.float32)
            batch = np.concatenate([batch, padding])
        return np.asarray(self.session.run(None, {self.input_name: batch})[0])[:count]
