"""Decoding an image file to RGB uint8 as displayed, and reading its displayed size cheaply.

"As displayed" means what a photo viewer shows: the EXIF orientation applied (annotation tools draw boxes
on the rotated image), any pixel mode turned into 8-bit RGB. Pillow's own `convert("RGB")` clips 16-bit
values at 255 instead of scaling them, so 16-bit and 32-bit integer modes are scaled here by hand.

Every failure to read a file (missing, not an image, truncated, a decompression bomb) raises `OnedetError`
naming the file, so prepare can report it or, with `--skip-bad`, count and skip it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from onedet.errors import OnedetError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".jfif", ".pgm", ".ppm"})
"""File suffixes (lower case) that the format readers treat as images."""

_EXIF_ORIENTATION = 0x0112
_ROTATED_QUARTER = frozenset({5, 6, 7, 8})  # orientations that swap width and height
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_GRAY_MODES = frozenset({"L", "1", "LA", "La"})


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation (1..8; 1 when absent), read without decoding the pixels.

    Pillow's PNG `getexif()` decodes the whole image to look for an eXIf chunk after the pixel data; we only
    use an eXIf chunk met while opening (the usual place), in both `image_size` and `load_image`, so the two
    always agree.
    """
    if img.format == "PNG" and "exif" not in img.info:
        return 1
    try:
        value = img.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # a corrupt EXIF block must not make a readable image unreadable
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _open(path: Path) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that, then decodes (300 MB for a 10000 x 10000
            # header on a file of a few bytes); refuse it as Pillow refuses larger ones, before any allocation.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(path)
    except FileNotFoundError as e:
        raise OnedetError(f"{path}: image file not found") from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise OnedetError(
            f"{path}: refused as a possible decompression bomb ({e}); raise PIL.Image.MAX_IMAGE_PIXELS if it is genuine"
        ) from e
    except Exception as e:  # Pillow's plugins raise many types (OSError, SyntaxError, EOFError, struct.error, ...)
        raise OnedetError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of the image as displayed, from the file header and EXIF only (no pixel decoding)."""
    path = Path(path)
    with _open(path) as img:
        w, h = img.size
        if _orientation(img) in _ROTATED_QUARTER:
            w, h = h, w
    return h, w


def _scale_to_uint8(a: np.ndarray, full_scale: float) -> np.ndarray:
    """Integer or float pixels in [0, full_scale] to uint8, scaled (not clipped at 255) and rounded."""
    a = np.clip(a.astype(np.float32), 0.0, full_scale)
    return np.rint(a * (255.0 / full_scale)).astype(np.uint8)


def _to_rgb(img: Image.Image) -> tuple[np.ndarray, list[str]]:
    """Pixels of any Pillow mode as uint8 [H, W, 3], and the conversion done ([] for RGB already)."""
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img), []
    if mode in _SIXTEEN_BIT_MODES:
        a = np.asarray(img)
        # "I" is 32-bit signed; in practice it holds 16-bit data (older Pillow opened 16-bit PNGs so).
        gray = _scale_to_uint8(a, 65535.0)
        return np.repeat(gray[..., None], 3, axis=2), ["converted_16bit"]
    if mode == "F":
        a = np.asarray(img)
        # Float images have no fixed range; [0, 1] is the common convention, else assume 8-bit values.
        gray = _scale_to_uint8(a, 1.0 if float(np.nanmax(a, initial=0.0)) <= 1.0 else 255.0)
        return np.repeat(gray[..., None], 3, axis=2), ["converted_float"]
    if mode in _GRAY_MODES:
        # Alpha is dropped, as every viewer-independent pipeline (and onedet's runtime) does.
        return np.asarray(img.convert("L").convert("RGB")), ["converted_grayscale"]
    if mode in ("RGBA", "RGBa", "RGBX"):
        return np.asarray(img.convert("RGB")), ["converted_rgba"]
    if mode in ("P", "PA"):
        return np.asarray(img.convert("RGB")), ["converted_palette"]
    if mode == "CMYK":
        # Pillow undoes Adobe's inverted CMYK while decoding JPEGs; the conversion itself is the naive one.
        return np.asarray(img.convert("RGB")), ["converted_cmyk"]
    return np.asarray(img.convert("RGB")), [f"converted_{mode.lower().replace(';', '_')}"]


def load_image(path: str | Path) -> tuple[np.ndarray, list[str]]:
    """Decode an image file to uint8 [H, W, 3] RGB as displayed.

    Returns the pixels and the list of conversions applied, for prepare to count: "exif_rotated",
    "converted_grayscale", "converted_rgba" (alpha dropped), "converted_palette", "converted_16bit" (scaled by
    255/65535), "converted_cmyk", "converted_float", or "converted_<mode>" for rarer modes. An RGB image
    without EXIF rotation returns []. Raises `OnedetError` naming the file when it cannot be read whole.
    """
    path = Path(path)
    with _open(path) as img, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Possibly corrupt EXIF data" and the like, once per file
        try:
            orientation = _orientation(img)
            img.load()  # truncated files fail here (Pillow's LOAD_TRUNCATED_IMAGES stays False)
            fixes: list[str] = []
            if orientation != 1:
                img = ImageOps.exif_transpose(img)
                fixes.append("exif_rotated")
            pixels, converted = _to_rgb(img)
        except Exception as e:  # whatever the plugin raises, the file is what is wrong
            raise OnedetError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from e
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise OnedetError(f"{path}: decoded to an unexpected array {pixels.dtype} {pixels.shape}")
    return np.ascontiguousarray(pixels), fixes + converted  # may be read-only (a view of Pillow's bytes)
