"""Box measures the matcher and the loss share: normalisation by the image size, and the elementwise GIoU.

Boxes are `xyxy` pixels unless the name says otherwise (see docs/design.md). The elementwise GIoU of matched
pairs is written here because torchvision.ops only has the pairwise matrix or the loss form.
"""

from __future__ import annotations

import torch
from torch import Tensor


def normalize_xyxy(boxes_xyxy: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Divide `[..., 4]` pixel boxes by the image size `(H, W)`, so L1 costs do not depend on resolution."""
    h, w = image_size
    return boxes_xyxy / boxes_xyxy.new_tensor([w, h, w, h])


def elementwise_generalized_box_iou(boxes1_xyxy: Tensor, boxes2_xyxy: Tensor, eps: float = 1e-7) -> Tensor:
    """GIoU of matched pairs: `[..., 4]` and `[..., 4]` -> `[...]`.

    The eps keeps degenerate (zero-area) predictions finite, which early in training do occur.
    """
    area1 = (boxes1_xyxy[..., 2] - boxes1_xyxy[..., 0]).clamp(min=0) * (
        boxes1_xyxy[..., 3] - boxes1_xyxy[..., 1]
    ).clamp(min=0)
    area2 = (boxes2_xyxy[..., 2] - boxes2_xyxy[..., 0]).clamp(min=0) * (
        boxes2_xyxy[..., 3] - boxes2_xyxy[..., 1]
    ).clamp(min=0)
    lt = torch.maximum(boxes1_xyxy[..., :2], boxes2_xyxy[..., :2])
    rb = torch.minimum(boxes1_xyxy[..., 2:], boxes2_xyxy[..., 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1 + area2 - inter
    iou = inter / (union + eps)
    lt_c = torch.minimum(boxes1_xyxy[..., :2], boxes2_xyxy[..., :2])
    rb_c = torch.maximum(boxes1_xyxy[..., 2:], boxes2_xyxy[..., 2:])
    wh_c = (rb_c - lt_c).clamp(min=0)
    area_c = wh_c[..., 0] * wh_c[..., 1]
    return iou - (area_c - union) / (area_c + eps)
