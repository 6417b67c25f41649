"""DetectionLoss: finite terms (empty images, bf16), gradients reaching the matched locations, weights outside."""

import pytest
import torch

from onedet.model.detector import DetectorOutput as Output
from onedet.model.head import make_points
from onedet.model.loss import DetectionLoss, infer_image_size, weighted_total


def _output(b=2, c=3, aux=True, seed=0, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    points = torch.cat([make_points(8, 8, 8, torch.device("cpu")), make_points(4, 4, 16, torch.device("cpu"))])
    strides = torch.cat([torch.full((64,), 8.0), torch.full((16,), 16.0)])
    n = len(points)

    def branch():
        logits = (torch.randn(b, n, c, generator=g) - 2).requires_grad_(requires_grad)
        dist = (torch.rand(b, n, 4, generator=g) * 3 + 0.5) * strides[:, None]
        boxes = torch.cat([points - dist[..., :2], points + dist[..., 2:]], -1).requires_grad_(requires_grad)
        return logits, boxes

    logits, boxes = branch()
    aux_logits, aux_boxes = branch() if aux else (None, None)
    return Output(logits, boxes, points, strides, aux_logits, aux_boxes)


def _targets():
    boxes = torch.tensor([[[4.0, 4.0, 30.0, 40.0], [30.0, 20.0, 60.0, 50.0]], [[0.0, 0.0, 1.0, 1.0]] * 2])
    labels = torch.tensor([[0, 2], [0, 0]])
    valid = torch.tensor([[True, True], [False, False]])  # the second image has no boxes
    return boxes, labels, valid


def test_terms_finite_and_gradients_reach_matched_locations():
    out = _output()
    boxes, labels, valid = _targets()
    loss = DetectionLoss()
    terms = loss(out, boxes, labels, valid, image_size=(64, 64))
    assert set(terms) == {"focal", "l1", "giou", "aux_focal", "aux_l1", "aux_giou"}
    assert all(t.ndim == 0 and torch.isfinite(t) for t in terms.values())
    weighted_total(terms, {"focal": 2, "l1": 5, "giou": 2}).backward()
    matched = loss.matcher.match(out.logits, out.boxes_xyxy, boxes, labels, valid, (64, 64))
    box_grad = out.boxes_xyxy.grad.abs().sum(-1)  # (B, N)
    expected = torch.zeros_like(box_grad, dtype=torch.bool)
    expected[0, matched[0]] = True
    assert torch.equal(box_grad > 0, expected)  # box terms: only the two matched locations
    assert (out.logits.grad != 0).all()  # focal: every location and class (background too)
    assert out.aux_boxes_xyxy.grad.abs().sum() > 0 and out.aux_logits.grad.abs().sum() > 0


def test_an_assigner_chooses_the_matched_locations():
    """Label assignment distillation: the targets go to the locations matched on another output (a teacher's)."""
    out, other = _output(seed=0), _output(seed=1, requires_grad=False)
    boxes, labels, valid = _targets()
    loss = DetectionLoss()
    own = loss.matcher.match(out.logits, out.boxes_xyxy, boxes, labels, valid, (64, 64))
    theirs = loss.matcher.match(other.logits, other.boxes_xyxy, boxes, labels, valid, (64, 64))
    assert not torch.equal(own[0], theirs[0]), "the test needs outputs that match differently"
    terms = loss(out, boxes, labels, valid, image_size=(64, 64), assigner=other)
    terms["l1"].backward()
    box_grad = out.boxes_xyxy.grad.abs().sum(-1)
    expected = torch.zeros_like(box_grad, dtype=torch.bool)
    expected[0, theirs[0]] = True
    assert torch.equal(box_grad > 0, expected)
    # the aux branch too: matched on the assigner's aux predictions, the same terms as the assigner's own assignment
    aux_of = loss.matcher.match_one_to_many(other.aux_logits, other.aux_boxes_xyxy, out.points, boxes, labels, valid,
                                            (64, 64))  # fmt: skip
    from onedet.model.loss import _dense_terms

    expected_aux = _dense_terms(out.aux_logits, out.aux_boxes_xyxy, aux_of, boxes, labels, (64, 64),
                                (aux_of >= 0).sum().float().clamp(min=1))  # fmt: skip
    for name, value in expected_aux.items():
        torch.testing.assert_close(terms[f"aux_{name}"], value, msg=name)
    same = loss(out, boxes, labels, valid, image_size=(64, 64), assigner=out)
    plain = loss(out, boxes, labels, valid, image_size=(64, 64))
    assert all(torch.equal(same[k], plain[k]) for k in plain)


def test_empty_batch_is_finite_and_only_pushes_towards_background():
    out = _output(aux=True)
    boxes, labels, valid = _targets()
    valid[:] = False
    terms = DetectionLoss()(out, boxes, labels, valid, image_size=(64, 64))
    assert all(torch.isfinite(t) for t in terms.values())
    assert terms["l1"] == 0 and terms["giou"] == 0 and terms["aux_l1"] == 0
    weighted_total(terms).backward()
    assert (out.logits.grad > 0).all()  # all scores pushed down
    # No targets at all (M = 0) works too.
    terms = DetectionLoss()(_output(), boxes[:, :0], labels[:, :0], valid[:, :0])
    assert all(torch.isfinite(t) for t in terms.values())


def test_perfect_prediction_has_zero_box_terms_and_focal_matches_reference():
    out = _output(b=1, aux=False, requires_grad=False)
    loss = DetectionLoss()
    gt = out.boxes_xyxy[:, [5, 40]].clone()
    labels, valid = torch.tensor([[1, 2]]), torch.ones(1, 2, dtype=torch.bool)
    out.logits[0, 5, 1] = out.logits[0, 40, 2] = 4.0  # exact boxes and confident: they must win the matching
    terms = loss(out, gt, labels, valid, image_size=(64, 64))
    assert set(terms) == {"focal", "l1", "giou"}
    matched = loss.matcher.match(out.logits, out.boxes_xyxy, gt, labels, valid, (64, 64))[0]
    target = torch.zeros_like(out.logits[0])
    target[matched, labels[0]] = 1
    p = out.logits[0].sigmoid()
    p_t = p * target + (1 - p) * (1 - target)
    ce = -(p_t.log())
    focal = ((0.25 * target + 0.75 * (1 - target)) * (1 - p_t) ** 2 * ce).sum() / 2
    torch.testing.assert_close(terms["focal"], focal, rtol=1e-4, atol=1e-6)
    assert matched.tolist() == [5, 40]
    assert terms["l1"] < 1e-6 and terms["giou"] < 1e-6


def test_bf16_autocast_stays_finite():
    out = _output()
    boxes, labels, valid = _targets()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = Output(*(t.to(torch.bfloat16) if t is not None and t.is_floating_point() else t for t in out))
        terms = DetectionLoss()(bf16, boxes, labels, valid, image_size=(64, 64))
    assert all(t.dtype == torch.float32 and torch.isfinite(t) for t in terms.values())


def test_image_size_inferred_from_the_grid():
    out = _output()
    assert infer_image_size(out.points, out.strides) == (64, 64)


def test_weighted_total():
    terms = {"focal": torch.tensor(1.0), "l1": torch.tensor(2.0), "aux_l1": torch.tensor(3.0)}
    assert weighted_total(terms, {"focal": 2.0, "l1": 5.0}) == 2 + 10 + 15  # aux_l1 falls back to l1's weight
    assert weighted_total(terms, {"focal": 2.0, "l1": 5.0, "aux_l1": 1.0}) == 2 + 10 + 3
    with pytest.raises(KeyError, match="focal"):
        weighted_total(terms, {"l1": 1.0})


def test_same_terms_under_an_initialised_process_group(tmp_path):
    import torch.distributed as dist

    out = _output()
    boxes, labels, valid = _targets()
    alone = DetectionLoss()(out, boxes, labels, valid, image_size=(64, 64))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:  # the box counts go through all_reduce: with one process they must not change
        grouped = DetectionLoss()(out, boxes, labels, valid, image_size=(64, 64))
    finally:
        dist.destroy_process_group()
    for name in alone:
        torch.testing.assert_close(grouped[name], alone[name])


def test_from_config_weighs_the_matching_cost_with_the_loss_weights():
    from onedet.config import ModelConfig

    default = DetectionLoss.from_config(ModelConfig.from_preset("tiny")).matcher
    assert (default.cost_class, default.cost_bbox, default.cost_giou) == (2.0, 5.0, 2.0)
    weights = {"focal": 1.0, "l1": 7.0, "giou": 3.0}
    matcher = DetectionLoss.from_config(ModelConfig.from_preset("tiny", loss_weights=weights)).matcher
    assert (matcher.cost_class, matcher.cost_bbox, matcher.cost_giou) == (1.0, 7.0, 3.0)
