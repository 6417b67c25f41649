"""NMS-free post-processing: top-k over locations and classes, and boxes back to original image pixels.

The one-to-one head is trained so that one location fires per object, so decoding is a sigmoid and a top-k
(as OneNet, D-FINE and RT-DETR decode). Tensors only, fixed output shapes and no data-dependent control flow:
the same functions run inside the exported ONNX graph.
"""

from __future__ import annotations

import torch
from torch import Tensor


def decode_topk(logits: Tensor, boxes_xyxy: Tensor, k: int = 100) -> tuple[Tensor, Tensor, Tensor]:
    """The k best (location, class) pairs of each image.

    logits `[B, N, C]` (pre-sigmoid), boxes_xyxy `[B, N, 4]` -> boxes_xyxy `[B, K, 4]`, scores `[B, K]` (sorted,
    descending), labels `[B, K]` (int64), with `K = min(k, N * C)`. A location may appear once per class, as
    with any sigmoid head decoded over classes.
    """
    b, n, c = logits.shape
    k = min(k, n * c)
    scores, flat = torch.topk(logits.sigmoid().reshape(b, n * c), k, dim=1)  # (B, K)
    location = torch.div(flat, c, rounding_mode="floor")
    labels = flat - location * c
    boxes = torch.gather(boxes_xyxy, 1, location[..., None].expand(b, k, 4))
    return boxes, scores, labels


def to_original(boxes_xyxy: Tensor, scale: Tensor, orig_size: Tensor | None = None) -> Tensor:
    """Letterboxed boxes `[B, K, 4]` back to original pixels: divide by the per-image `scale [B]` (the letterbox
    puts the image at the top-left, so there is no offset) and clip to `orig_size [B, 2]` (h, w) when given.
    """
    boxes = boxes_xyxy / scale.to(boxes_xyxy.dtype).reshape(-1, 1, 1)
    if orig_size is None:
        return boxes
    h = orig_size[:, 0].to(boxes.dtype).reshape(-1, 1)
    w = orig_size[:, 1].to(boxes.dtype).reshape(-1, 1)
    # torch.minimum with broadcast tensors rather than clamp(max=tensor) keeps the ONNX graph simple.
    zero = torch.zeros_like(boxes[..., 0])
    x0 = torch.minimum(torch.maximum(boxes[..., 0], zero), w)
    y0 = torch.minimum(torch.maximum(boxes[..., 1], zero), h)
    x1 = torch.minimum(torch.maximum(boxes[..., 2], zero), w)
    y1 = torch.minimum(torch.maximum(boxes[..., 3], zero), h)
    return torch.stack([x0, y0, x1, y1], dim=-1)
