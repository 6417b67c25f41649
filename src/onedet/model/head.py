"""The anchor-free detection head, shared across pyramid levels (FCOS-style, without centerness).

Every location of every level is a candidate: its point is the centre of its cell, `((x + 0.5) s, (y + 0.5) s)`
for stride `s`. Two towers of depthwise-separable 3x3 convs (classification, box) feed a sigmoid classifier and
four distances to the box sides (left, top, right, bottom), `softplus(scale_level * raw) * s`, so they are >= 0
and in pixels.
Training assigns each ground-truth box to one location (OneNet), which makes the head NMS-free.

The one-to-one classifier also sees the 3x3 neighbourhood maximum of its tower's features (`[f, maxpool3x3(f)]`),
so it can learn to score a location only where it is the local peak. Convolution features change smoothly from
cell to cell, and without this the head's main error was a duplicate on the neighbouring stride-8 cell. The idea is
DeFCN's 3D max filtering (Wang et al. 2021), kept to one learned 1x1 layer: nothing is suppressed by a rule, and
MaxPool exports to ONNX and TensorRT. On the quickstart recipe it raised val AP50 after 12 epochs from 0.659 to
0.724 (same load, same run; BENCHMARKS.md, Model).

The optional auxiliary branch (YOLOv10 "dual assignment") is a second pair of towers and 1x1 prediction layers on
the same pyramid maps, trained with a one-to-many assignment: it gives the neck and backbone many more positives
early in training and is dropped at inference. It has its own towers, as YOLOv10's one-to-many head does: sharing
them made neighbouring locations look alike to the one-to-one layers (their duplicates were the quickstart's main
error), and separate towers reached a clearly higher val AP50 after 8 quickstart epochs (BENCHMARKS.md, Model).
Checkpoints need not hold the aux weights: inference never reads them.

At inference (eval mode) the one-to-one scores go through a 3x3 per-class peak filter (`peak_filter`): a location
keeps its class score only where it is the maximum of its 3x3 neighbourhood on its level, as CenterNet extracts
peaks (Zhou et al. 2019). The learned local-maximum input above removed most duplicates but not all: on the
quickstart model 46 of its 62 remaining duplicates sat one stride-8 cell from the true detection, and the filter
raises its val AP50 from 0.883 to 0.912 (BENCHMARKS.md, Training). It is not NMS: no IoU, no threshold, no
sorting, a fixed cost; one MaxPool and one Where in the exported graph. Training never sees it (the one-to-one
loss is what makes one location fire per object); `ModelConfig.peak_filter=False` turns it off.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple, cast

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import nn

PRIOR_PROB = 0.01  # initial foreground probability (RetinaNet), so the focal loss starts near background
INIT_DISTANCE = 2.0  # initial distance to each side, in strides
SUPPRESSED_LOGIT = -1e4  # what the peak filter writes: sigmoid gives 0, and it is finite in bf16 and fp16


class HeadOutput(NamedTuple):
    logits: torch.Tensor  # [B, N, C]
    boxes_xyxy: torch.Tensor  # [B, N, 4]
    points: torch.Tensor  # [N, 2]
    strides: torch.Tensor  # [N]
    aux_logits: torch.Tensor | None
    aux_boxes_xyxy: torch.Tensor | None


def _tower(channels: int, num_convs: int) -> nn.Sequential:
    # Depthwise-separable 3x3 convs (as YOLOv10's classification branch): at stride 8 a full 3x3 conv of two
    # towers costs a sizeable fraction of the backbone's FLOPs (BENCHMARKS.md, Model); this is several times cheaper.
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        layers += [
            nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),
            nn.Conv2d(channels, channels, 1, bias=False),
            LayerNorm2d(channels),
            nn.GELU(),
        ]
    return nn.Sequential(*layers)


def _flatten(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)  # (B, C, h, w) -> (B, h*w, C)


def peak_filter(logits: torch.Tensor) -> torch.Tensor:
    """Per-class 3x3 peak filter of one level's logits `[B, C, h, w]`: a value that is not the maximum of its 3x3
    neighbourhood (same class) becomes `SUPPRESSED_LOGIT`; ties all stay."""
    peak = F.max_pool2d(logits, kernel_size=3, stride=1, padding=1)
    return torch.where(logits >= peak, logits, SUPPRESSED_LOGIT)


def make_points(height: int, width: int, stride: int, device: torch.device) -> torch.Tensor:
    """Cell centres `[height * width, 2]` (x, y) in pixels, row-major."""
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) * stride
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) * stride
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=1)


class DetectionHead(nn.Module):
    """Pyramid maps (one `[B, channels, H/s, W/s]` per stride) -> `HeadOutput` over all locations of all levels."""

    def __init__(
        self,
        *,
        channels: int,
        num_classes: int,
        strides: Sequence[int],
        num_convs: int = 1,
        aux: bool = False,
        peak_filter: bool = True,
    ) -> None:
        super().__init__()
        self.strides = tuple(strides)
        self.use_peak_filter = peak_filter  # applied in eval mode only
        self.cls_tower = _tower(channels, num_convs)
        self.box_tower = _tower(channels, num_convs)
        self.cls_pred = nn.Conv2d(2 * channels, num_classes, 1)  # [features, their 3x3 local maximum]
        self.box_pred = nn.Conv2d(channels, 4, 1)
        self.scales = nn.Parameter(torch.ones(len(self.strides)))  # per-level scale of the raw distances
        self.aux_cls_tower = _tower(channels, num_convs) if aux else None
        self.aux_box_tower = _tower(channels, num_convs) if aux else None
        self.aux_cls_pred = nn.Conv2d(channels, num_classes, 1) if aux else None
        self.aux_box_pred = nn.Conv2d(channels, 4, 1) if aux else None
        self._init_weights()

    def _init_weights(self) -> None:
        bias_cls = -math.log((1 - PRIOR_PROB) / PRIOR_PROB)
        bias_box = math.log(math.expm1(INIT_DISTANCE))  # softplus(bias) == INIT_DISTANCE
        for cls, box in ((self.cls_pred, self.box_pred), (self.aux_cls_pred, self.aux_box_pred)):
            if cls is None or box is None:  # the aux layers: both or neither
                continue
            assert cls.bias is not None and box.bias is not None  # made with bias=True
            nn.init.normal_(cls.weight, std=0.01)
            nn.init.constant_(cls.bias, bias_cls)
            nn.init.normal_(box.weight, std=0.01)
            nn.init.constant_(box.bias, bias_box)

    def _decode(self, raw: torch.Tensor, points: torch.Tensor, stride: int, scale: torch.Tensor) -> torch.Tensor:
        # float32: bf16 has 8 mantissa bits, i.e. whole-pixel errors at 640 px
        dist = F.softplus(_flatten(raw).float() * scale) * stride  # (B, h*w, 4) ltrb
        return torch.cat([points - dist[..., :2], points + dist[..., 2:]], dim=-1)

    def forward(self, maps: Sequence[torch.Tensor], with_aux: bool = False) -> HeadOutput:
        logits, boxes, points, strides = [], [], [], []
        aux = with_aux and self.aux_cls_pred is not None
        aux_logits, aux_boxes = [], []
        for level, (x, stride) in enumerate(zip(maps, self.strides)):
            cls_feat, box_feat = self.cls_tower(x), self.box_tower(x)
            pts = make_points(x.shape[-2], x.shape[-1], stride, x.device)
            peak = F.max_pool2d(cls_feat, kernel_size=3, stride=1, padding=1)
            cls_logits = self.cls_pred(torch.cat([cls_feat, peak], dim=1)).float()
            if self.use_peak_filter and not self.training:
                cls_logits = peak_filter(cls_logits)
            logits.append(_flatten(cls_logits))
            boxes.append(self._decode(self.box_pred(box_feat), pts, stride, self.scales[level]))
            points.append(pts)
            strides.append(torch.full((pts.shape[0],), float(stride), device=x.device))
            if aux:  # then the aux layers exist (made together in __init__)
                aux_cls = cast(nn.Sequential, self.aux_cls_tower)(x)
                aux_box = cast(nn.Sequential, self.aux_box_tower)(x)
                aux_logits.append(_flatten(cast(nn.Conv2d, self.aux_cls_pred)(aux_cls)).float())
                aux_boxes.append(
                    self._decode(cast(nn.Conv2d, self.aux_box_pred)(aux_box), pts, stride, self.scales[level])
                )
        return HeadOutput(
            logits=torch.cat(logits, dim=1),
            boxes_xyxy=torch.cat(boxes, dim=1),
            points=torch.cat(points, dim=0),
            strides=torch.cat(strides, dim=0),
            aux_logits=torch.cat(aux_logits, dim=1) if aux else None,
            aux_boxes_xyxy=torch.cat(aux_boxes, dim=1) if aux else None,
        )
