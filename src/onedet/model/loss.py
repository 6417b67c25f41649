"""`DetectionLoss`: the training loss of the NMS-free head, as a dict of named, unweighted terms.

OneNet's loss (PeizeSun/OneNet): sigmoid focal loss over every location (one-hot targets at the matched
locations, background everywhere else) plus L1 of normalised boxes and GIoU on the matched locations, all
normalised by the number of target boxes. When the model has the auxiliary one-to-many branch
(`DetectorOutput.aux_logits`), the same three terms are computed for it with the one-to-many assignment and
named `aux_*`. The weights are applied outside (`weighted_total`), as DETR's `SetCriterion` does, so the
training log can show every term on the same scale.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torchvision.ops import sigmoid_focal_loss

from onedet.boxes import elementwise_generalized_box_iou, normalize_xyxy
from onedet.config import LOSS_WEIGHTS, ModelConfig
from onedet.model.matcher import MinCostMatcher


class DetectionLoss(nn.Module):
    """Loss of a `DetectorOutput` against padded targets, matched by `matcher` (default: OneNet's weights)."""

    def __init__(self, matcher: MinCostMatcher | None = None) -> None:
        super().__init__()
        self.matcher = matcher if matcher is not None else MinCostMatcher()

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> DetectionLoss:
        """The loss of a model config: its `loss_weights` weigh the matching cost too (`focal`, `l1`, `giou`), so
        the location a target is matched to is the one the weighted loss prefers."""
        w = {**LOSS_WEIGHTS, **cfg.loss_weights}
        return cls(MinCostMatcher(cost_class=w["focal"], cost_bbox=w["l1"], cost_giou=w["giou"]))

    def forward(
        self,
        output: Any,
        boxes_xyxy: Tensor,
        labels: Tensor,
        valid: Tensor,
        image_size: tuple[int, int] | None = None,
        assigner: Any | None = None,
    ) -> dict[str, Tensor]:
        """Terms `focal`, `l1`, `giou` (and `aux_focal`, `aux_l1`, `aux_giou` with the aux branch).

        output: a `DetectorOutput` (`logits [B, N, C]`, `boxes_xyxy [B, N, 4]`, `points [N, 2]`, `strides [N]`,
        `aux_logits`, `aux_boxes_xyxy`); targets `boxes_xyxy [B, M, 4]` (input pixels), `labels [B, M]`,
        `valid [B, M]`; `image_size (H, W)` of the input (default: the extent of the location grid).
        `assigner`: another model's `DetectorOutput` at the same locations whose predictions the targets are
        matched to instead of `output`'s (a teacher's, in label assignment distillation); its aux branch assigns
        the aux targets when it has one.
        """
        if image_size is None:
            image_size = infer_image_size(output.points, output.strides)
        valid = valid.bool()
        num_boxes = _global_mean_count(valid.sum())
        assign = output if assigner is None else assigner
        index = self.matcher.match(assign.logits, assign.boxes_xyxy, boxes_xyxy, labels, valid, image_size)
        # Turn "location per target" into "target per location", the form the dense loss needs.
        b, n = output.logits.shape[:2]
        target_of = torch.full((b, n), -1, dtype=torch.long, device=index.device)
        batch_index, target_index = valid.nonzero(as_tuple=True)
        target_of[batch_index, index[batch_index, target_index]] = target_index
        focal = {"alpha": self.matcher.focal_alpha, "gamma": self.matcher.focal_gamma}
        terms = _dense_terms(
            output.logits, output.boxes_xyxy, target_of, boxes_xyxy, labels, image_size, num_boxes, **focal
        )

        aux_logits = getattr(output, "aux_logits", None)
        if aux_logits is not None:
            if getattr(assign, "aux_logits", None) is None:
                assign = output
            aux_target_of = self.matcher.match_one_to_many(
                assign.aux_logits, assign.aux_boxes_xyxy, output.points, boxes_xyxy, labels, valid, image_size
            )
            # Normalised by the number of positives (about aux_topk per box), so the aux terms stay on the
            # scale of the one-to-one ones and the same weights suit both.
            num_pos = _global_mean_count((aux_target_of >= 0).sum())
            aux = _dense_terms(
                aux_logits, output.aux_boxes_xyxy, aux_target_of, boxes_xyxy, labels, image_size, num_pos, **focal
            )
            terms.update({f"aux_{k}": v for k, v in aux.items()})
        return terms


def _dense_terms(
    logits: Tensor,
    pred_boxes_xyxy: Tensor,
    target_of: Tensor,
    gt_boxes_xyxy: Tensor,
    gt_labels: Tensor,
    image_size: tuple[int, int],
    normalizer: Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> dict[str, Tensor]:
    """Focal over all locations, L1 and GIoU over positives; `target_of [B, N]` is -1 for background."""
    # float32 whatever autocast produced: the focal loss's logs and pows are not safe in bf16.
    logits = logits.float()
    pred_boxes_xyxy = pred_boxes_xyxy.float()
    batch_index, location_index = (target_of >= 0).nonzero(as_tuple=True)
    target_index = target_of[batch_index, location_index]
    classes = torch.zeros_like(logits)
    classes[batch_index, location_index, gt_labels[batch_index, target_index]] = 1.0
    focal = sigmoid_focal_loss(logits, classes, alpha=alpha, gamma=gamma, reduction="sum") / normalizer

    pred = pred_boxes_xyxy[batch_index, location_index]  # (P, 4)
    gt = gt_boxes_xyxy.float()[batch_index, target_index]
    l1 = (normalize_xyxy(pred, image_size) - normalize_xyxy(gt, image_size)).abs().sum() / normalizer
    giou = (1 - elementwise_generalized_box_iou(pred, gt)).sum() / normalizer
    return {"focal": focal, "l1": l1, "giou": giou}


def _global_mean_count(count: Tensor) -> Tensor:
    """The count averaged over DDP processes (so every process divides by the same number), at least 1."""
    count = count.float()
    if dist.is_available() and dist.is_initialized():
        count = count.clone()
        dist.all_reduce(count)
        count = count / dist.get_world_size()
    return count.clamp(min=1.0)


def infer_image_size(points: Tensor, strides: Tensor) -> tuple[int, int]:
    """The input's `(H, W)` from the location grid: the finest cell's far edge is the image's (padded) edge."""
    far = points + strides[:, None] / 2
    return round(float(far[:, 1].max())), round(float(far[:, 0].max()))


def weighted_total(terms: Mapping[str, Tensor], weights: Mapping[str, float] | None = None) -> Tensor:
    """`sum(weights[k] * terms[k])` (weights: `ModelConfig.loss_weights`). An `aux_X` term without a weight of
    its own takes `X`'s weight.

    Raises KeyError for a term that has no weight at all, so a renamed term cannot silently drop out.
    """
    weights = LOSS_WEIGHTS if weights is None else weights
    total: Tensor | None = None
    for name, value in terms.items():
        if name in weights:
            w = weights[name]
        elif name.startswith("aux_") and name[4:] in weights:
            w = weights[name[4:]]
        else:
            raise KeyError(f"no weight for loss term {name!r} (weights have {sorted(weights)})")
        total = w * value if total is None else total + w * value
    if total is None:
        raise ValueError("no loss terms to weigh")
    return total
