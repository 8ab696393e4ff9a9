"""Image discovery and robust loading: orientation, modes, and broken files."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from data_fixtures import gradient_image, write_broken_files, write_image
from library.data.images import (
    ImageSkipped,
    alpha_of,
    glob_images,
    load_rgb,
    map_images,
    open_image,
    read_image_size,
)


def test_glob_finds_every_extension_in_either_case(tmp_path):
    for name in ["a.png", "b.JPG", "c.jpeg", "d.WebP", "e.bmp", "f.txt", "g.gif", ".hidden.png"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "h.PNG").write_bytes(b"x")
    assert [p.name for p in glob_images(tmp_path)] == ["a.png", "b.JPG", "c.jpeg", "d.WebP", "e.bmp"]
    assert [p.name for p in glob_images(tmp_path, recursive=True)][-1] == "h.PNG"
    assert len(glob_images(tmp_path, recursive=True)) == 6


def test_exif_orientation_is_applied(tmp_path):
    image = gradient_image(40, 20, seed=1)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = write_image(tmp_path / "rotated.jpg", image, exif=exif, quality=95)
    loaded = load_rgb(path)
    assert loaded.size == (20, 40)
    assert read_image_size(path) == (20, 40)
    expected = np.asarray(Image.open(path).convert("RGB").transpose(Image.Transpose.ROTATE_270))
    assert np.array_equal(np.asarray(loaded), expected)


def test_rgba_is_composited_on_white_and_alpha_kept(tmp_path):
    pixels = np.zeros((4, 4, 4), dtype=np.uint8)
    pixels[..., 0] = 200  # red
    pixels[:, :2, 3] = 0  # left half fully transparent
    pixels[:, 2:, 3] = 255
    pixels[0, 3, 3] = 128  # one half-transparent pixel
    path = write_image(tmp_path / "alpha.png", Image.fromarray(pixels, "RGBA"))
    rgb = np.asarray(load_rgb(path)).astype(int)
    assert rgb[0, 0].tolist() == [255, 255, 255]
    assert rgb[1, 3].tolist() == [200, 0, 0]
    assert rgb[0, 3].tolist() == pytest.approx([228, 127, 127], abs=1)
    alpha = alpha_of(open_image(path))
    assert alpha.shape == (4, 4) and alpha[0, 0] == 0 and alpha[1, 3] == 1


@pytest.mark.parametrize("mode", ["L", "CMYK", "P", "1", "LA"])
def test_other_modes_become_rgb(tmp_path, mode):
    source = gradient_image(16, 8, seed=2).convert(mode)
    suffix = ".jpg" if mode == "CMYK" else ".png"
    path = write_image(tmp_path / f"m{suffix}", source)
    out = load_rgb(path)
    assert out.mode == "RGB" and out.size == (16, 8)


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 100, 65535, 257 * 200]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    out = np.asarray(load_rgb(path))
    assert out[0, :, 0].tolist() == [0, 100, 255, 200]


def test_palette_with_transparency(tmp_path):
    image = Image.new("P", (2, 1))
    image.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    image.putpixel((0, 0), 0)
    image.putpixel((1, 0), 1)
    image.info["transparency"] = 0
    path = write_image(tmp_path / "pal.png", image, transparency=0)
    assert np.asarray(load_rgb(path)).tolist() == [[[255, 255, 255], [10, 20, 30]]]


def test_every_kind_of_broken_file_is_skipped_with_a_reason(tmp_path):
    expected = write_broken_files(tmp_path)
    write_image(tmp_path / "good.png", gradient_image(8, 8))
    results = {path.name: (image, reason) for path, image, reason in map_images(glob_images(tmp_path), load_rgb, workers=2)}
    assert results["good.png"][0].size == (8, 8) and results["good.png"][1] is None
    for name, fragment in expected.items():
        image, reason = results[name]
        assert image is None and fragment in reason, (name, reason)
    with pytest.raises(ImageSkipped, match="too large"):
        read_image_size(tmp_path / "huge.png")


def test_own_pixel_limit(tmp_path):
    path = write_image(tmp_path / "big.png", gradient_image(10, 8))
    with pytest.raises(ImageSkipped, match=r"too large \(10x8"):
        load_rgb(path, max_pixels=79)
    assert load_rgb(path, max_pixels=80).size == (10, 8)
