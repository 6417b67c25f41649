"""The one letterbox (docs/design.md): keep the aspect ratio, resize to fit `S x S`, pad bottom/right with 114.

`scale = S / max(h, w)`; the image is resized to `(round(h * scale), round(w * scale))` with torch's bilinear
interpolation (antialiased, so shrinking averages instead of aliasing) and placed at the top-left of an
`S x S` canvas of grey 114. Store coordinates map back with `orig = store / scale` (no offset).

Prepare, the loader and predict call `letterbox_torch`, so pixels in a store are the pixels predict feeds the
model, bit for bit (the same kernel on the same uint8 input). The ONNX graph computes the same kernel as
banded MatMuls (`resize_banded`: TensorRT has no antialiased Resize), equal up to float rounding. The resized size is
computed in integer arithmetic (round half up) so Python, traced torch and ONNX agree on it exactly.

Measured (uint8 images, sizes 160..1024): against Pillow's `resize(BILINEAR)` (also antialiased) at most 1 grey
level apart (rounding).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

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
    axis), 3-4x the cost of `resize_banded`, which the export uses (BENCHMARKS.md, "The letterbox"). Rows first:
    for landscape images that is the cheaper order. Also `resize_antialias`'s fallback where torch's kernel is
    wrong (at width 1, where it is cheap), and the reference `resize_banded` is tested against.
    """
    h, w = images.shape[-2], images.shape[-1]
    return antialias_weights(h, new_h) @ images @ antialias_weights(w, new_w).T


BAND_ROWS = 16
"""Output rows (or columns) per band of `resize_banded`."""


def _resize_rows_banded(x: Tensor, out_size: Any) -> Tensor:
    """Resize axis -2 of float `[..., n, W]` to `out_size` rows with torch's antialiased bilinear filter, in bands.

    The output rows are cut into bands of `BAND_ROWS`; band `g` reads only the `length` input rows from
    `start[g]` that its filters can reach, all bands gathered into one `[..., bands, length, W]` copy (about the
    input's size), so the cost is `out x length` multiply-adds per column instead of `out x n`. `length` is a
    whole-number bound, the same for every band, so the sizes stay symbolic for export; rows in a band outside a
    filter's support get weight exactly 0, so the result is the dense filter's.
    """
    n = x.shape[-2]
    m = out_size
    r = BAND_ROWS
    bands = (m + r - 1) // r
    # Output i reaches the inputs j with |j + 1/2 - c_i| < s, c_i = (i + 1/2) n / m, s = max(n / m, 1): band g
    # spans (r - 1) n / m + 2 s rows; two more cover the float rounding of its start below.
    length = torch.sym_min(torch.sym_max(((r + 1) * n + m - 1) // m, ((r - 1) * n + m - 1) // m + 2) + 2, n)
    scale = torch.full((), 1.0, dtype=torch.float32) * n / m
    support = scale.clamp(min=1.0)
    rows = torch.arange(bands * r, dtype=torch.float32).clamp(max=m - 1)  # the last band's extra rows: copies
    centers = ((rows + 0.5) * scale).view(bands, r, 1)
    start = (centers[:, 0, 0] - support - 0.5).floor().clamp(min=0).to(torch.int64).clamp(max=n - length)
    index = start[:, None] + torch.arange(length, dtype=torch.int64)  # [bands, length]
    weights = (1 - ((index.to(torch.float32) + 0.5)[:, None, :] - centers).abs() / support).clamp(min=0)
    weights = weights / weights.sum(dim=-1, keepdim=True)  # [bands, r, length]
    gathered = x.index_select(-2, index.flatten()).unflatten(-2, (bands, length))  # [..., bands, length, W]
    # The first m rows; a Gather rather than a slice, whose symbolic size min(m, bands * r) the exporter cannot
    # simplify to m (then the letterbox would not be provably S x S, and the backbone would resize its position
    # embedding in the graph).
    return (weights @ gathered).flatten(-3, -2).index_select(-2, torch.arange(m))


def resize_banded(images: Tensor, new_h: Any, new_w: Any) -> Tensor:
    """Antialiased bilinear resize of float `[B, C, H, W]` as banded matrix products: `resize_separable`'s result
    (`F.interpolate(..., antialias=True)` up to float rounding) at a fraction of its cost.

    Why by hand: see `resize_separable` (TensorRT has no antialiased Resize). Its dense `new x old` matrices cost
    `old` multiply-adds per output pixel and axis; the bands cost `length / BAND_ROWS`, about `old / new` plus a
    few. Only Gather, MatMul, Transpose and shape arithmetic. Rows first, as `resize_separable`.
    """
    rows = _resize_rows_banded(images, new_h)
    return _resize_rows_banded(rows.transpose(-1, -2), new_w).transpose(-1, -2)


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
    the kernel: `resize_antialias` (the store's) or, in the exported graph, `resize_banded` (plain MatMul).
    """
    h, w = images.shape[-2], images.shape[-1]
    longest = torch.sym_max(h, w)
    # ints in eager mode; SymInts (which stand in for ints) while tracing or exporting
    new_h = cast(int, torch.sym_max((2 * h * size + longest) // (2 * longest), 1))
    new_w = cast(int, torch.sym_max((2 * w * size + longest) // (2 * longest), 1))
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
