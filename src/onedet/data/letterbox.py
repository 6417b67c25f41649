"""The one letterbox (docs/design.md): keep the aspect ratio, resize to fit `S x S`, pad bottom/right with 114.

`scale = S / max(h, w)`; the image is resized to `(round(h * scale), round(w * scale))` with torch's bilinear
interpolation (antialiased, so shrinking averages instead of aliasing) and placed at the top-left of an
`S x S` canvas of grey 114. Store coordinates map back with `orig = store / scale` (no offset).

Prepare, the loader and predict call `letterbox_torch`, so pixels in a store are the pixels predict feeds the
model, bit for bit (the same kernel on the same uint8 input). The ONNX graph computes the same kernel as two
MatMuls (`resize_separable`: TensorRT has no antialiased Resize), equal up to float rounding. The resized size is
computed in integer arithmetic (round half up) so Python, traced torch and ONNX agree on it exactly.

Measured (uint8 images, sizes 160..1024): against Pillow's `resize(BILINEAR)` (also antialiased) at most 1 grey
level apart (rounding).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

PAD_VALUE = 114


def antialias_weights(in_size: int, out_size: int) -> Tensor:
    """`[out_size, in_size]` row-stochastic matrix of torch's antialiased bilinear resize along one axis.

    The triangle filter of `F.interpolate(mode="bilinear", antialias=True, align_corners=False)`: output `i` has
    centre `c = (i + 0.5) * in / out` and weights `max(0, 1 - |j + 0.5 - c| / max(in / out, 1))`, normalised to sum
    to 1 (which also reproduces its clamping at the borders). Only Range, arithmetic and ReduceSum: no Resize.
    """
    scale = torch.full((), in_size / out_size, dtype=torch.float32)
    centers = (torch.arange(out_size, dtype=torch.float32) + 0.5) * scale
    positions = torch.arange(in_size, dtype=torch.float32) + 0.5
    weights = (1 - (positions[None, :] - centers[:, None]).abs() * scale.clamp(min=1.0).reciprocal()).clamp(min=0)
    return weights / weights.sum(dim=1, keepdim=True)


def resize_separable(images: Tensor, new_h: int, new_w: int) -> Tensor:
    """Antialiased bilinear resize of float `[B, C, H, W]` as two matrix products, equal to `F.interpolate(...,
    antialias=True)` up to float rounding (~1e-4 grey levels).

    Why by hand: ONNX has an antialiased Resize only from opset 18 (`antialias=1`), and TensorRT 10 does not
    implement it (NVIDIA/TensorRT issue 3560); MatMul runs everywhere. The matrices are dense (`new x old` per
    axis), which costs more than a banded kernel on very large images (12 MP: ~0.3 s more on one CPU thread) but
    is a rounding error next to the model at camera resolutions (BENCHMARKS.md, Inference). Rows first: for
    landscape images that is the cheaper order. Also `resize_antialias`'s fallback where torch's kernel is wrong.
    """
    h, w = images.shape[-2], images.shape[-1]
    return antialias_weights(h, new_h) @ images @ antialias_weights(w, new_w).T


def resize_antialias(images: torch.Tensor, new_h: int, new_w: int) -> torch.Tensor:
    """Antialiased bilinear resize of float `[B, C, H, W]`: `F.interpolate`, except where it is wrong.

    torch 2.14's float antialiased kernel is wrong on contiguous NCHW input one pixel wide (zeros, or values far
    from the true ones; tests/test_export.py shows it): 1-pixel-wide images go through `resize_separable`, which is
    exact and, at that width, cheap.
    """
    if images.shape[-1] == 1:
        return resize_separable(images, new_h, new_w)
    return F.interpolate(images, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)


def letterbox_params(h: int, w: int, size: int) -> tuple[float, int, int]:
    """(scale, new_h, new_w) of the letterbox of an `h x w` image into `size x size`."""
    if h <= 0 or w <= 0:
        raise ValueError(f"image size must be positive, got {h}x{w}")
    longest = max(h, w)
    # round(h * size / longest) without floating point: (2 h S + L) // (2 L) rounds halves up, exactly.
    new_h = (2 * h * size + longest) // (2 * longest)
    new_w = (2 * w * size + longest) // (2 * longest)
    return size / longest, max(new_h, 1), max(new_w, 1)


def letterbox_float(
    images: Tensor, size: int, resize: Callable[[Tensor, int, int], Tensor] = resize_antialias
) -> Tensor:
    """Letterbox uint8 (or float) `[B, 3, H, W]` to float `[B, 3, S, S]` in 0..255, not rounded.

    Only tensor ops on symbolic sizes: traces and exports with dynamic H and W. `resize(images, new_h, new_w)` is
    the kernel: `resize_antialias` (the store's) or, in the exported graph, `resize_separable` (plain MatMul).
    """
    h, w = images.shape[-2], images.shape[-1]
    longest = torch.sym_max(h, w)
    new_h = torch.sym_max((2 * h * size + longest) // (2 * longest), 1)
    new_w = torch.sym_max((2 * w * size + longest) // (2 * longest), 1)
    resized = resize(images.float(), new_h, new_w)
    return F.pad(resized, (0, size - new_w, 0, size - new_h), value=float(PAD_VALUE))


def letterbox_torch(images: torch.Tensor, size: int) -> torch.Tensor:
    """Letterbox uint8 `[B, 3, H, W]` or `[3, H, W]` images to uint8 `[B, 3, S, S]` (or `[3, S, S]`): the store's
    pixels, `letterbox_float` rounded (the pad value is a whole grey level already)."""
    squeeze = images.dim() == 3
    x = images[None] if squeeze else images
    out = letterbox_float(x, size).round_().clamp_(0, 255).to(torch.uint8)
    return out[0] if squeeze else out


def letterbox_image(image: np.ndarray | torch.Tensor, size: int) -> np.ndarray | torch.Tensor:
    """Letterbox one image: numpy uint8 `[H, W, 3]` (as decoded) -> numpy uint8 `[3, S, S]`; torch `[3, H, W]` ->
    torch `[3, S, S]`. Both go through `letterbox_torch`, so they give identical pixels."""
    if isinstance(image, torch.Tensor):
        return letterbox_torch(image, size)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected uint8 [H, W, 3], got {image.dtype} {list(image.shape)}")
    h, w = image.shape[:2]
    _, new_h, new_w = letterbox_params(h, w, size)
    if (new_h, new_w) == (h, w):
        # Already the right size (e.g. 640x480 at 640): the resize would be the identity (weights exactly 1).
        out = np.full((3, size, size), PAD_VALUE, np.uint8)
        out[:, :h, :w] = image.transpose(2, 0, 1)
        return out
    chw = np.ascontiguousarray(image.transpose(2, 0, 1))  # CHW: torch's resize is ~20% faster than channels-last
    return letterbox_torch(torch.from_numpy(chw), size).numpy()
