"""Test images generated on the fly: ordinary photos-to-be, odd modes and every kind of broken file."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

# Raise the pixel limit check without writing a huge file: a PNG header claiming 20000x20000.
HUGE_SIDE = 20000


def gradient_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth, seeded RGB image (gradients plus a little noise), like a small photograph."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / max(width - 1, 1), y / max(height - 1, 1), (x + y) / max(width + height - 2, 1)], -1)
    pixels = base * 200 + rng.uniform(0, 55, size=(height, width, 3))
    return Image.fromarray(pixels.astype(np.uint8))


def write_image(path: Path, image: Image.Image, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def _huge_png_header() -> bytes:
    """A tiny PNG file whose header claims HUGE_SIDE x HUGE_SIDE pixels."""
    buffer = io.BytesIO()
    Image.new("L", (HUGE_SIDE, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    # IHDR starts at byte 16: width (4 bytes), height (4 bytes); then fix the chunk CRC.
    import struct
    import zlib

    data[20:24] = struct.pack(">I", HUGE_SIDE)
    data[16:20] = struct.pack(">I", HUGE_SIDE)
    crc = zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF
    data[29:33] = struct.pack(">I", crc)
    return bytes(data)


def write_broken_files(folder: Path) -> dict[str, str]:
    """Write one file of every broken kind; returns {file name: expected reason fragment}."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.jpg").write_text("this is a text file, not a JPEG\n", encoding="utf-8")
    good = io.BytesIO()
    gradient_image(64, 64, seed=9).save(good, format="JPEG", quality=90)
    (folder / "truncated.jpg").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    png = io.BytesIO()
    gradient_image(64, 64, seed=8).save(png, format="PNG")
    corrupt = bytearray(png.getvalue())
    corrupt[60:200] = bytes(140)  # zeroed IDAT data: a CRC / decompression failure
    (folder / "corrupt.png").write_bytes(bytes(corrupt))
    (folder / "huge.png").write_bytes(_huge_png_header())
    return {
        "empty.png": "empty file",
        "notes.jpg": "not an image",
        "truncated.jpg": "truncated",
        "corrupt.png": "corrupt",
        "huge.png": "too large",
    }


def write_constant_tagger(folder: Path, probabilities, labels: list[tuple[str, int]], size: int = 8, batch=None) -> Path:
    """A WD14-shaped ONNX model ([batch, size, size, 3] -> [batch, n]) that outputs `probabilities`
    for every image, plus its selected_tags.csv. `batch` None means a dynamic batch dimension."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    probabilities = np.asarray(probabilities, dtype=np.float32)
    count = len(probabilities)
    flat = size * size * 3
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input_1:0"], ["flat"], axis=1),
            helper.make_node("Gemm", ["flat", "zeros", "probs"], ["predictions_sigmoid"]),
        ],
        "constant_tagger",
        [helper.make_tensor_value_info("input_1:0", TensorProto.FLOAT, [batch if batch else "batch", size, size, 3])],
        [helper.make_tensor_value_info("predictions_sigmoid", TensorProto.FLOAT, [batch if batch else "batch", count])],
        initializer=[
            numpy_helper.from_array(np.zeros((flat, count), np.float32), "zeros"),
            numpy_helper.from_array(probabilities, "probs"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / "model.onnx")
    rows = ["tag_id,name,category,count"] + [f"{i},{name},{category},100" for i, (name, category) in enumerate(labels)]
    (folder / "selected_tags.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder
