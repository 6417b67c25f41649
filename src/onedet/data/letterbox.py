"""The one letterbox (docs/design.md): keep the aspect ratio, resize to fit `S x S`, pad bottom/right with 114.

`scale = S / max(h, w)`; the image is resized to `(round(h * scale), round(w * scale))` with torch's bilinear
interpolation (antialiased, so shrinking averages instead of aliasing) and placed at the top-left of an
`S x S` canvas of grey 114. Store coordinates map back with `orig = store / scale` (no offset).

Prepare, the loader, predict and the ONNX graph all call `letterbox_torch`, so pixels in a store are the pixels
predict feeds the model, bit for bit (the same kernel on the same uint8 input). The resized size is computed in
integer arithmetic (round half up) so Python, traced torch and ONNX agree on it exactly.

Measured (uint8 images, sizes 160..1024): against Pillow's `resize(BILINEAR)` (also antialiased) at most 1 grey
level apart (rounding); the same graph exported with the dynamo exporter (opset 18, dynamic H and W) and run by
onnxruntime at most 1 level apart on about 0.01% of the pixels.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

PAD_VALUE = 114


def letterbox_params(h: int, w: int, size: int) -> tuple[float, int, int]:
    """(scale, new_h, new_w) of the letterbox of an `h x w` image into `size x size`."""
    if h <= 0 or w <= 0:
        raise ValueError(f"image size must be positive, got {h}x{w}")
    longest = max(h, w)
    # round(h * size / longest) without floating point: (2 h S + L) // (2 L) rounds halves up, exactly.
    new_h = (2 * h * size + longest) // (2 * longest)
    new_w = (2 * w * size + longest) // (2 * longest)
    return size / longest, max(new_h, 1), max(new_w, 1)


def letterbox_torch(images: torch.Tensor, size: int) -> torch.Tensor:
    """Letterbox uint8 `[B, 3, H, W]` or `[3, H, W]` images to uint8 `[B, 3, S, S]` (or `[3, S, S]`).

    Only tensor ops on symbolic sizes: traces and exports with dynamic H and W.
    """
    squeeze = images.dim() == 3
    x = images[None] if squeeze else images
    h, w = x.shape[-2], x.shape[-1]
    longest = torch.sym_max(h, w)
    new_h = torch.sym_max((2 * h * size + longest) // (2 * longest), 1)
    new_w = torch.sym_max((2 * w * size + longest) // (2 * longest), 1)
    resized = F.interpolate(x.float(), size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
    resized = resized.round_().clamp_(0, 255)
    out = F.pad(resized, (0, size - new_w, 0, size - new_h), value=float(PAD_VALUE)).to(torch.uint8)
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
