"""Image decoding as displayed: EXIF orientation, pixel modes to RGB uint8 with the right values, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from onedet.data.images import image_size, load_image
from onedet.errors import OnedetError


def _quadrants(h: int = 32, w: int = 48) -> np.ndarray:
    """An RGB image with four flat coloured quadrants (survives JPEG with small errors, shows any rotation)."""
    a = np.zeros((h, w, 3), np.uint8)
    a[: h // 2, : w // 2] = (255, 0, 0)
    a[: h // 2, w // 2 :] = (0, 255, 0)
    a[h // 2 :, : w // 2] = (0, 0, 255)
    a[h // 2 :, w // 2 :] = (255, 255, 0)
    return a


def _save_with_orientation(a: np.ndarray, path: Path, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(a).save(path, quality=95, exif=exif.tobytes())


@pytest.mark.parametrize(
    ("orientation", "expected"),
    [
        (1, lambda a: a),
        (3, lambda a: np.rot90(a, 2)),
        (6, lambda a: np.rot90(a, -1)),  # rotate 90 degrees clockwise to display
        (8, lambda a: np.rot90(a, 1)),
        (2, lambda a: a[:, ::-1]),
    ],
)
def test_exif_orientation_is_applied(tmp_path: Path, orientation: int, expected) -> None:
    raw = _quadrants()
    path = tmp_path / f"o{orientation}.jpg"
    _save_with_orientation(raw, path, orientation)
    pixels, fixes = load_image(path)
    want = expected(raw)
    assert pixels.shape == want.shape and pixels.dtype == np.uint8
    assert image_size(path) == want.shape[:2]
    # Away from quadrant edges JPEG keeps flat colours within a few levels.
    for y, x in [(4, 4), (4, -5), (-5, 4), (-5, -5)]:
        assert np.abs(pixels[y, x].astype(int) - want[y, x].astype(int)).max() <= 8, (y, x)
    assert ("exif_rotated" in fixes) == (orientation != 1)


def test_rgb_png_is_exact_and_unfixed(tmp_path: Path) -> None:
    a = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "a.png")
    pixels, fixes = load_image(tmp_path / "a.png")
    assert fixes == [] and np.array_equal(pixels, a)
    assert image_size(tmp_path / "a.png") == (7, 9)


def test_grayscale_and_la_become_equal_channels(tmp_path: Path) -> None:
    g = np.arange(60, dtype=np.uint8).reshape(6, 10) * 4
    Image.fromarray(g, "L").save(tmp_path / "g.png")
    Image.fromarray(np.stack([g, np.full_like(g, 7)], axis=2), "LA").save(tmp_path / "la.png")
    for name in ("g.png", "la.png"):
        pixels, fixes = load_image(tmp_path / name)
        assert fixes == ["converted_grayscale"]
        assert np.array_equal(pixels, np.repeat(g[..., None], 3, axis=2))


def test_rgba_drops_alpha_keeping_colours(tmp_path: Path) -> None:
    rgba = np.random.default_rng(1).integers(0, 256, (5, 8, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    pixels, fixes = load_image(tmp_path / "a.png")
    assert fixes == ["converted_rgba"] and np.array_equal(pixels, rgba[..., :3])


def test_palette_maps_through_the_palette(tmp_path: Path) -> None:
    img = Image.new("P", (4, 3))
    palette = [10, 20, 30, 200, 100, 50] + [0] * (256 * 3 - 6)
    img.putpalette(palette)
    idx = np.array([[0, 1, 1, 0], [1, 0, 0, 1], [0, 0, 1, 1]], np.uint8)
    img.putdata(idx.ravel().tolist())
    img.save(tmp_path / "p.png")
    pixels, fixes = load_image(tmp_path / "p.png")
    lut = np.array([[10, 20, 30], [200, 100, 50]], np.uint8)
    assert fixes == ["converted_palette"] and np.array_equal(pixels, lut[idx])


def test_16bit_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 257, 1000, 32768, 65535]], np.uint16)
    want = np.rint(values / 257.0).astype(np.uint8)  # [0, 1, 4, 128, 255]; Pillow's convert would clip 1000 to 255
    Image.fromarray(values).save(tmp_path / "a.png")
    assert Image.open(tmp_path / "a.png").mode.startswith("I;16")
    Image.fromarray(values.astype(np.int32), "I").save(tmp_path / "a.tif")  # 32-bit integer mode
    for name in ("a.png", "a.tif"):
        pixels, fixes = load_image(tmp_path / name)
        assert fixes == ["converted_16bit"], name
        assert np.array_equal(pixels, np.repeat(want[..., None], 3, axis=2)), name


def test_cmyk_converts_to_rgb(tmp_path: Path) -> None:
    cmyk = np.array([[[255, 0, 0, 0], [0, 128, 255, 64], [0, 0, 0, 255]]], np.uint8)
    Image.fromarray(cmyk, "CMYK").save(tmp_path / "a.tif")
    pixels, fixes = load_image(tmp_path / "a.tif")
    c, m, y, k = (cmyk[..., i].astype(float) for i in range(4))
    want = np.stack([(255 - c) * (255 - k), (255 - m) * (255 - k), (255 - y) * (255 - k)], axis=-1) / 255
    assert fixes == ["converted_cmyk"]
    assert np.abs(pixels.astype(float) - want).max() <= 1.0


def test_truncated_and_unreadable_files_name_the_file(tmp_path: Path) -> None:
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "t.jpg")
    data = (tmp_path / "t.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "t.png")
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.jpg").write_bytes(b"not an image at all")
    for name in ("t.jpg", "t.png", "junk.jpg", "missing.jpg"):
        with pytest.raises(OnedetError, match=name):
            load_image(tmp_path / name)
    for name in ("junk.jpg", "missing.jpg"):
        with pytest.raises(OnedetError, match=name):
            image_size(tmp_path / name)
