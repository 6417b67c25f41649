"""The distillation criterion: zero when the student is the teacher, positive otherwise, gradients to the student
and the projectors only, and no ground-truth terms from unlabelled images."""

from __future__ import annotations

import copy

import pytest
import torch

from onedet.config import ModelConfig
from onedet.errors import OnedetError
from onedet.model.detector import Detector, DetectorOutput, build_detector
from onedet.model.distill_loss import (
    DistillLoss,
    build_projectors,
    check_compatible,
    soft_focal_bce,
    teacher_detections,
)
from onedet.model.loss import DetectionLoss
from onedet.model.postprocess import decode_topk
from onedet.train.distill import DistillForward

KD_TERMS = ("kd_cls", "kd_aux_cls", "kd_box_l1", "kd_box_giou", "kd_feat")


def _teacher() -> Detector:
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset(
        "tiny", num_classes=3, depth=2, global_blocks=(1,), taps=(0, 1), image_size=128, pretrained=None
    )
    model = build_detector(cfg)
    with torch.no_grad():  # a confident teacher somewhere, so the box terms have locations to distil
        model.head.cls_pred.weight.normal_(0.0, 0.05)
        model.head.cls_pred.bias.fill_(0.0)
    return model


def _forward(student: Detector, teacher: Detector) -> DistillForward:
    cfg = student.config
    projectors = build_projectors(cfg.neck_channels, teacher.config.neck_channels, len(cfg.strides))
    return DistillForward(student, teacher, projectors, None, torch.device("cpu")).train()


def _targets(batch: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    boxes = torch.tensor([[[10.0, 12.0, 60.0, 70.0], [70.0, 20.0, 120.0, 90.0]]]).repeat(batch, 1, 1)
    labels = torch.tensor([[0, 2]]).repeat(batch, 1)
    return boxes, labels, torch.ones(batch, 2, dtype=torch.bool)


def test_every_distillation_term_is_zero_when_the_student_is_the_teacher() -> None:
    teacher = _teacher()
    forward = _forward(copy.deepcopy(teacher), teacher)
    output = forward(torch.rand(2, 3, 128, 128))
    assert (output.teacher.logits.sigmoid().amax(-1) > 0.3).any(), "the test needs confident locations"
    terms = DistillLoss()(output, *_targets(), labeled=torch.ones(2, dtype=torch.bool))
    assert set(terms) == set(KD_TERMS)
    for name in KD_TERMS:
        assert float(terms[name].detach()) < 1e-6, (name, float(terms[name].detach()))


def test_terms_are_positive_and_gradients_reach_the_student_and_projectors_only() -> None:
    teacher = _teacher()
    student = copy.deepcopy(teacher)
    student.set_backbone_frozen(False)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    forward = _forward(student, teacher)
    output = forward(torch.rand(2, 3, 128, 128))
    terms = DistillLoss()(output, *_targets(), labeled=torch.ones(2, dtype=torch.bool))
    for name in KD_TERMS:
        assert float(terms[name].detach()) > 0, name
    sum(terms.values()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in forward.projectors.parameters())
    for part in ("backbone", "neck", "head"):
        grads = [p.grad for p in getattr(student, part).parameters()]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), part


def test_unlabelled_images_get_no_ground_truth_terms() -> None:
    teacher = _teacher()
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        student.head.cls_pred.bias.add_(0.5)
    forward = _forward(student, teacher)
    output = forward(torch.rand(2, 3, 128, 128))
    boxes, labels, valid = _targets()
    criterion = DistillLoss(DetectionLoss.from_config(teacher.config))
    labeled = torch.tensor([True, False])
    terms = criterion(output, boxes, labels, valid, labeled)
    assert {"focal", "l1", "giou", "aux_focal", "aux_l1", "aux_giou"} <= set(terms)
    # the GT terms are those of the labelled image alone ...
    alone = DetectionLoss.from_config(teacher.config)(
        output.student._replace(
            logits=output.student.logits[:1],
            boxes_xyxy=output.student.boxes_xyxy[:1],
            aux_logits=output.student.aux_logits[:1],
            aux_boxes_xyxy=output.student.aux_boxes_xyxy[:1],
        ),
        boxes[:1],
        labels[:1],
        valid[:1],
    )
    for name, value in alone.items():
        torch.testing.assert_close(terms[name], value, msg=name)
    # ... and whatever boxes the unlabelled image carries change nothing
    other = boxes.clone()
    other[1] = torch.tensor([[0.0, 0.0, 30.0, 30.0], [40.0, 40.0, 100.0, 100.0]])
    other_labels = labels.clone()
    other_labels[1] = labels[1].flip(0)
    again = criterion(output, other, other_labels, valid, labeled)
    for name in terms:
        torch.testing.assert_close(again[name], terms[name], msg=name)


def test_students_at_other_strides_or_padding_are_clear_errors() -> None:
    cfg = _teacher().config
    other = ModelConfig.from_dict({**cfg.to_dict(), "strides": [16, 32]})
    with pytest.raises(OnedetError, match=r"strides \[16, 32\], the teacher at \[8, 16, 32\]"):
        check_compatible(other, cfg, 128)
    windowed = ModelConfig.from_dict({**cfg.to_dict(), "window_size": 4})  # another multiple, the same padding
    check_compatible(windowed, cfg, 128)
    with pytest.raises(OnedetError, match="pads its input to 128 px and the teacher to 256 px"):
        check_compatible(windowed, ModelConfig.from_dict({**cfg.to_dict(), "window_size": 16, "image_size": 256}), 100)


def test_without_a_teacher_only_the_ground_truth_terms_remain() -> None:
    teacher = _teacher()
    forward = DistillForward(
        copy.deepcopy(teacher), None, build_projectors(96, 96, 0), None, torch.device("cpu")
    ).train()
    output = forward(torch.rand(2, 3, 128, 128))
    assert output.teacher is None and output.student_maps == ()
    terms = DistillLoss(DetectionLoss.from_config(teacher.config))(
        output, *_targets(), labeled=torch.ones(2, dtype=torch.bool)
    )
    assert set(terms) == {"focal", "l1", "giou", "aux_focal", "aux_l1", "aux_giou"}


def test_teacher_detections_are_what_the_teacher_detects_at_inference() -> None:
    teacher = _teacher()
    images = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        dense = DistillForward(copy.deepcopy(teacher), teacher, build_projectors(96, 96, 0), None, torch.device("cpu"))(
            images
        ).teacher  # unfiltered, as distillation reads it
        teacher.head.use_peak_filter = True
        inference = teacher.eval()(images)  # the head's own peak filter, per level
    boxes, scores, labels = decode_topk(inference.logits, inference.boxes_xyxy, 100)
    threshold = float(scores[0, 10])  # some detections above it, most below
    got_boxes, got_labels, got_valid = teacher_detections(dense, (128, 128), threshold)
    torch.testing.assert_close(got_boxes, boxes)
    assert torch.equal(got_labels, labels)
    assert torch.equal(got_valid, scores >= threshold)
    assert 0 < int(got_valid.sum()) < got_valid.numel()
    per_class = torch.tensor([threshold, 2.0, 0.0])  # class 1 never, class 2 always
    _, _, got_valid = teacher_detections(dense, (128, 128), per_class)
    assert torch.equal(got_valid, scores >= per_class[labels])
    assert not got_valid[labels == 1].any() and got_valid[labels == 2].all()


def test_unlabelled_images_learn_the_teachers_detections_as_ground_truth() -> None:
    teacher = _teacher()
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        student.head.cls_pred.bias.add_(0.5)
    output = _forward(student, teacher)(torch.rand(2, 3, 128, 128))
    gt = DetectionLoss.from_config(teacher.config)
    criterion = DistillLoss(gt, pseudo_loss=gt, pseudo_threshold=0.3)
    terms = criterion(output, *_targets(), labeled=torch.tensor([True, False]))
    pseudo = {k[len("pseudo_") :]: v for k, v in terms.items() if k.startswith("pseudo_")}
    assert set(pseudo) == {"focal", "l1", "giou", "aux_focal", "aux_l1", "aux_giou"}

    def image(out: DetectorOutput, i: int) -> DetectorOutput:
        fields = ("logits", "boxes_xyxy", "aux_logits", "aux_boxes_xyxy")
        return out._replace(**{f: getattr(out, f)[i : i + 1] for f in fields})

    targets = teacher_detections(image(output.teacher, 1), (128, 128), 0.3)
    assert int(targets[2].sum()) > 0, "the test needs a teacher that detects something"
    expected = gt(image(output.student, 1), *targets)
    for name, value in expected.items():
        torch.testing.assert_close(pseudo[name], value, msg=name)
        assert float(value.detach()) > 0, name
    # a batch without unlabelled images has the terms, at zero
    all_labelled = criterion(output, *_targets(), labeled=torch.ones(2, dtype=torch.bool))
    assert all(float(all_labelled[f"pseudo_{k}"].detach()) == 0 for k in pseudo)


def test_assignment_by_the_teacher_matches_the_ground_truth_to_the_teachers_predictions() -> None:
    teacher = _teacher()
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        for conv in (student.head.cls_pred, student.head.box_pred):  # a student that prefers other locations
            conv.weight.add_(torch.randn_like(conv.weight) * 0.5)
    output = _forward(student, teacher)(torch.rand(2, 3, 128, 128))
    gt = DetectionLoss.from_config(teacher.config)
    labeled = torch.tensor([True, False])
    terms = DistillLoss(gt, pseudo_loss=gt, pseudo_threshold=0.3, assign_by_teacher=True)(
        output, *_targets(), labeled=labeled
    )
    by_student = DistillLoss(gt, pseudo_loss=gt, pseudo_threshold=0.3)(output, *_targets(), labeled=labeled)

    def image(out: DetectorOutput, i: int) -> DetectorOutput:
        fields = ("logits", "boxes_xyxy", "aux_logits", "aux_boxes_xyxy")
        return out._replace(**{f: getattr(out, f)[i : i + 1] for f in fields})

    boxes, labels, valid = (t[:1] for t in _targets())
    expected = gt(image(output.student, 0), boxes, labels, valid, assigner=image(output.teacher, 0))
    pseudo = teacher_detections(image(output.teacher, 1), (128, 128), 0.3)
    assert int(pseudo[2].sum()) > 0, "the test needs a teacher that detects something"
    expected_pseudo = gt(image(output.student, 1), *pseudo, assigner=image(output.teacher, 1))
    for name, value in expected.items():
        torch.testing.assert_close(terms[name], value, msg=name)
        torch.testing.assert_close(terms[f"pseudo_{name}"], expected_pseudo[name], msg=name)
    assert any(not torch.equal(terms[k], by_student[k]) for k in expected), "the assignment must change something"


def test_each_score_term_is_normalised_by_its_branchs_soft_count_of_positives() -> None:
    teacher = _teacher()
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        student.head.cls_pred.bias.add_(0.5)
        student.head.aux_cls_pred.bias.add_(0.5)
    output = _forward(student, teacher)(torch.rand(2, 3, 128, 128))
    terms = DistillLoss()(output, *_targets(), labeled=torch.ones(2, dtype=torch.bool))
    s, t = output.student, output.teacher
    ones = t.logits.sigmoid().amax(-1).sum()
    many = t.aux_logits.sigmoid().amax(-1).sum()
    assert abs(float(many) / float(ones) - 1) > 0.5, "the test needs branches of different soft counts"
    torch.testing.assert_close(terms["kd_cls"], soft_focal_bce(s.logits, t.logits) / ones)
    torch.testing.assert_close(terms["kd_aux_cls"], soft_focal_bce(s.aux_logits, t.aux_logits) / many)
