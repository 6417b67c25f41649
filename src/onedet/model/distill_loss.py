"""`DistillLoss`: the criterion of `onedet distill`, as a dict of named, unweighted terms (DETR style).

A student learns the frozen teacher's dense outputs on the same (augmented) batch, location by location, which is
why both must predict at the same strides on the same padded input:

- `kd_cls`, `kd_aux_cls`: the student's class scores learn the teacher's sigmoid scores at every location, for
  the one-to-one branch and the auxiliary one-to-many branch. Quality focal loss (GFL, Li et al. 2020) with the
  teacher's score as the soft target, `|sigmoid(s) - sigmoid(t)|^gamma * BCE(s, sigmoid(t))`: the modulating
  factor keeps the many easy background locations from swamping the few the teacher scores high (the reason for
  the focal loss itself), and it makes the term exactly zero when the logits agree. Normalised by the teacher's
  soft count of positives in that branch (the sum over locations of its top class score there): a one-to-many
  branch fires at about `aux_topk` locations per object, so its term would otherwise be that many times the
  one-to-one term, as the ground-truth aux terms would be without their division by the number of positives.
- `kd_box_l1`, `kd_box_giou`: where the teacher is confident (its top score above `box_threshold`), the student's
  boxes learn the teacher's decoded boxes, L1 on normalised coordinates and GIoU, weighted by that score.
- `kd_feat`: feature mimicking (FitNets, Romero et al. 2015; focused on the objects as in FGD, Yang et al. 2022):
  the MSE between the student's pyramid maps, projected by a 1x1 conv per level (`build_projectors`; identity when
  the widths match, so a student equal to its teacher starts at zero), and the teacher's, weighted per location by
  the teacher's confidence map (top score) and normalised by the sum of that map.
- The ordinary ground-truth terms of `DetectionLoss` (`focal`, `l1`, `giou`, `aux_*`) on the labelled images only.
- With `assign_by_teacher`, label assignment distillation (LAD, Nguyen et al. 2022): the ground truth (and the
  pseudo-labels) are matched to the *teacher's* predictions rather than the student's, so each object's one
  positive location is the one where the teacher fires, which is also where the dense score targets above peak.
  Matched to the student's own predictions the two can disagree: the ground truth can make the student's own best
  location the one positive and the teacher's background, where `kd_cls` asks for the teacher's score. (Measured
  on bccd, one seed each, it helped one recipe and not another: BENCHMARKS.md; off by default.)
- `pseudo_*`: on the unlabelled images, the same `DetectionLoss` against the teacher's own detections
  (`teacher_detections`: its one-to-one scores through the inference peak filter, every (location, class) pair
  scoring at least `pseudo_threshold`, one score or one per class) as hard targets, the pseudo-labelling of
  semi-supervised detection (Sohn et al. 2020, "STAC"; Liu et al. 2021, "Unbiased Teacher"). The dense soft
  targets above tell the student how much the teacher believes each location; they do not tell a one-to-one head,
  which must fire at one location per object, *where* its one location is. Minimum-cost matching against the
  teacher's boxes does, as it does for ground truth. Off without a `pseudo_loss`.

The weights are applied outside, by `onedet.model.loss.weighted_total` (`DistillConfig` holds them).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from onedet.boxes import elementwise_generalized_box_iou, normalize_xyxy
from onedet.errors import OnedetError
from onedet.model.head import peak_filter
from onedet.model.loss import DetectionLoss, _global_mean_count, infer_image_size
from onedet.model.postprocess import decode_topk


class DistillOutput(NamedTuple):
    """What the distillation forward returns: both models' dense outputs on the same images, and their maps."""

    student: Any
    """The student's `DetectorOutput` (training mode: with the aux branch)."""
    teacher: Any
    """The teacher's `DetectorOutput` (float32, no gradient; aux computed, no peak filter)."""
    student_maps: tuple[Tensor, ...]
    """The student's pyramid maps through the projectors, one `[B, C_teacher, h, w]` per stride."""
    teacher_maps: tuple[Tensor, ...]
    """The teacher's pyramid maps, one `[B, C_teacher, h, w]` per stride (float32, no gradient)."""


def build_projectors(student_channels: int, teacher_channels: int, num_levels: int) -> nn.ModuleList:
    """One 1x1 conv per pyramid level from the student's width to the teacher's; identity when they are equal."""
    projectors = nn.ModuleList(nn.Conv2d(student_channels, teacher_channels, 1) for _ in range(num_levels))
    if student_channels == teacher_channels:
        with torch.no_grad():
            for conv in cast(Iterable[nn.Conv2d], projectors):
                conv.weight.copy_(torch.eye(teacher_channels)[:, :, None, None])
                assert conv.bias is not None  # Conv2d's default bias=True
                conv.bias.zero_()
    return projectors


def check_compatible(student_cfg: Any, teacher_cfg: Any, image_size: int | None = None) -> None:
    """An OnedetError unless the two models predict at the same strides with the same number of classes and (given
    `image_size`) pad that input alike, so they predict at the same locations."""
    if tuple(student_cfg.strides) != tuple(teacher_cfg.strides):
        raise OnedetError(
            f"the student predicts at strides {list(student_cfg.strides)}, the teacher at "
            f"{list(teacher_cfg.strides)}; distillation compares them location by location, so they must match"
        )
    if student_cfg.num_classes != teacher_cfg.num_classes:
        raise OnedetError(f"the student has {student_cfg.num_classes} classes, the teacher {teacher_cfg.num_classes}")
    if image_size is None:
        return
    padded = [-(-image_size // m) * m for m in (student_cfg.input_multiple, teacher_cfg.input_multiple)]
    if padded[0] != padded[1]:
        raise OnedetError(
            f"at {image_size} px the student pads its input to {padded[0]} px and the teacher to {padded[1]} px "
            "(patch size x window size differ), so their locations differ; choose a window_size that pads alike"
        )


def soft_focal_bce(student_logits: Tensor, teacher_logits: Tensor, gamma: float = 2.0) -> Tensor:
    """Quality focal loss of student logits against the teacher's sigmoid scores, summed: `[B, N, C]` x 2 -> []."""
    target = teacher_logits.float().sigmoid()
    logits = student_logits.float()
    weight = (logits.sigmoid() - target).abs().pow(gamma)
    return (weight * F.binary_cross_entropy_with_logits(logits, target, reduction="none")).sum()


def teacher_detections(
    output: Any, image_size: tuple[int, int], threshold: float | Tensor, max_boxes: int = 100
) -> tuple[Tensor, Tensor, Tensor]:
    """The teacher's detections as padded targets: its one-to-one logits through the per-class 3x3 peak filter of
    each level (what inference applies), then the `max_boxes` best (location, class) pairs, those scoring at least
    `threshold` (a score, or a `[C]` tensor of one per class) valid. `output` is a `DetectorOutput` of unfiltered
    logits `[B, N, C]`; returns `boxes_xyxy [B, K, 4]`, `labels [B, K]`, `valid [B, K]` in `DetectionLoss`'s form."""
    logits = output.logits.float()
    b, n, c = logits.shape
    h_in, w_in = image_size
    levels, start = [], 0
    strides, counts = torch.unique_consecutive(output.strides, return_counts=True)
    for stride, count in zip(strides.tolist(), counts.tolist(), strict=True):
        h, w = round(h_in / stride), round(w_in / stride)
        if h * w != count:
            raise OnedetError(f"stride {stride}: {count} locations are not a {h}x{w} grid of a {h_in}x{w_in} input")
        level = logits[:, start : start + count].transpose(1, 2).reshape(b, c, h, w)
        levels.append(peak_filter(level).reshape(b, c, count).transpose(1, 2))
        start += count
    if start != n:
        raise OnedetError(f"the levels hold {start} locations, the logits {n}")
    boxes, scores, labels = decode_topk(torch.cat(levels, dim=1), output.boxes_xyxy.float(), max_boxes)
    if isinstance(threshold, Tensor):
        threshold = threshold.to(scores.device, scores.dtype)[labels]
    return boxes, labels, scores >= threshold


class DistillLoss(nn.Module):
    """Distillation terms of a `DistillOutput` (module docstring), plus `gt_loss`'s terms on the labelled images.

    Args:
        gt_loss: the ground-truth criterion (a `DetectionLoss`), or None for distillation alone.
        gamma: the quality focal loss's exponent.
        box_threshold: teacher top score above which a location's box is distilled.
        pseudo_loss: the criterion of the unlabelled images against the teacher's detections (`pseudo_*` terms),
            or None for none.
        pseudo_threshold: the teacher score from which a detection is a pseudo-label, or a `[C]` tensor of one per
            class.
        assign_by_teacher: match targets to the teacher's predictions (module docstring), where there is a teacher.
    """

    def __init__(
        self,
        gt_loss: DetectionLoss | None = None,
        *,
        gamma: float = 2.0,
        box_threshold: float = 0.3,
        pseudo_loss: DetectionLoss | None = None,
        pseudo_threshold: float | Tensor = 0.4,
        assign_by_teacher: bool = False,
    ) -> None:
        super().__init__()
        self.gt_loss, self.gamma, self.box_threshold = gt_loss, gamma, box_threshold
        self.pseudo_loss, self.pseudo_threshold = pseudo_loss, pseudo_threshold
        self.assign_by_teacher = assign_by_teacher

    def forward(
        self,
        output: DistillOutput,
        boxes_xyxy: Tensor,
        labels: Tensor,
        valid: Tensor,
        labeled: Tensor,
    ) -> dict[str, Tensor]:
        """Terms `kd_cls`, `kd_aux_cls` (when both have the aux branch), `kd_box_l1`, `kd_box_giou`, `kd_feat` (when
        there are projected maps), and `gt_loss`'s (`focal`, `l1`, `giou`, `aux_*`) over the images with
        `labeled [B]` True (targets `boxes_xyxy [B, M, 4]`, `labels [B, M]`, `valid [B, M]`, as `DetectionLoss`
        takes them), and with a `pseudo_loss` its terms as `pseudo_*` over the other images against the teacher's
        detections. Without a teacher output (`output.teacher` None: every distillation weight is 0) only the
        ground-truth terms."""
        student, teacher = output.student, output.teacher
        image_size = infer_image_size(student.points, student.strides)
        terms = {} if teacher is None else self._distill_terms(output, image_size)
        keep = labeled.bool()
        by_teacher = self.assign_by_teacher and teacher is not None
        if self.gt_loss is not None:
            targets = boxes_xyxy[keep], labels[keep], valid[keep]
            assigner = _select(teacher, keep) if by_teacher else None
            terms.update(self.gt_loss(_select(student, keep), *targets, image_size, assigner=assigner))
        if self.pseudo_loss is not None and teacher is not None:
            # Computed when no image of this batch is unlabelled too (an all-false selection: zero terms), so every
            # step has the same terms: the log's averages and DDP's collectives (the count) see them all.
            other = ~keep
            unlabeled_teacher = _select(teacher, other)
            pseudo_targets = teacher_detections(unlabeled_teacher, image_size, self.pseudo_threshold)
            assigner = unlabeled_teacher if by_teacher else None
            pseudo = self.pseudo_loss(_select(student, other), *pseudo_targets, image_size, assigner=assigner)
            terms.update({f"pseudo_{k}": v for k, v in pseudo.items()})
        return terms

    def _distill_terms(self, output: DistillOutput, image_size: tuple[int, int]) -> dict[str, Tensor]:
        student, teacher = output.student, output.teacher
        if student.logits.shape != teacher.logits.shape:
            raise OnedetError(
                f"student logits {list(student.logits.shape)} and teacher logits {list(teacher.logits.shape)} "
                "differ: the two models must have the same classes, strides and padded input size"
            )
        confidence = teacher.logits.float().sigmoid().amax(dim=-1)  # (B, N)
        objects = _global_mean_count(confidence.sum())
        terms = {"kd_cls": soft_focal_bce(student.logits, teacher.logits, self.gamma) / objects}
        if student.aux_logits is not None and teacher.aux_logits is not None:
            aux_positives = _global_mean_count(teacher.aux_logits.float().sigmoid().amax(dim=-1).sum())
            terms["kd_aux_cls"] = soft_focal_bce(student.aux_logits, teacher.aux_logits, self.gamma) / aux_positives

        weight = confidence * (confidence > self.box_threshold)
        box_norm = _global_mean_count(weight.sum())  # at least 1: a teacher confident nowhere distils no boxes
        picked = weight > 0
        w = weight[picked]
        pred, target = student.boxes_xyxy.float()[picked], teacher.boxes_xyxy.float()[picked]  # (P, 4)
        l1 = (normalize_xyxy(pred, image_size) - normalize_xyxy(target, image_size)).abs().sum(-1)
        terms["kd_box_l1"] = (w * l1).sum() / box_norm
        terms["kd_box_giou"] = (w * (1 - elementwise_generalized_box_iou(pred, target))).sum() / box_norm
        if output.student_maps:  # no projectors when feature mimicking is off (its weight is 0)
            terms["kd_feat"] = self._feature_term(output.student_maps, output.teacher_maps, confidence)
        return terms

    def _feature_term(
        self, student_maps: Sequence[Tensor], teacher_maps: Sequence[Tensor], confidence: Tensor
    ) -> Tensor:
        """Confidence-weighted MSE over the levels; `confidence [B, N]` is split into the levels' `[B, h, w]`."""
        total = confidence.new_zeros(())
        start = 0
        for s, t in zip(student_maps, teacher_maps, strict=True):
            b, _, h, w = t.shape
            level = confidence[:, start : start + h * w].reshape(b, h, w)
            start += h * w
            total = total + (level * (s.float() - t.float()).pow(2).mean(dim=1)).sum()
        return total / _global_mean_count(confidence.sum())


def _select(output: Any, keep: Tensor) -> Any:
    """The `DetectorOutput` of the images `keep [B]` (points and strides are shared by all images)."""
    return output._replace(
        logits=output.logits[keep],
        boxes_xyxy=output.boxes_xyxy[keep],
        aux_logits=None if output.aux_logits is None else output.aux_logits[keep],
        aux_boxes_xyxy=None if output.aux_boxes_xyxy is None else output.aux_boxes_xyxy[keep],
    )
