"""The OneNet matcher: one distinct minimum-cost location per box, batched == per image, weights honoured."""

import itertools

import torch
from scipy.optimize import linear_sum_assignment
from torchvision.ops import generalized_box_iou

from onedet.model.matcher import MinCostMatcher

IMAGE = (64, 96)  # (H, W)


def _reference_cost(logits, pred, gt, labels, w_class=2.0, w_bbox=5.0, w_giou=2.0):
    """OneNet's cost for one image, written out independently ([N, C], [N, 4], [M, 4], [M] -> [N, M])."""
    p = logits.sigmoid()[:, labels]
    neg = 0.75 * p**2 * -(1 - p + 1e-8).log()
    pos = 0.25 * (1 - p) ** 2 * -(p + 1e-8).log()
    scale = torch.tensor([IMAGE[1], IMAGE[0], IMAGE[1], IMAGE[0]])
    l1 = (pred[:, None] / scale - gt[None] / scale).abs().sum(-1)
    return w_class * (pos - neg) + w_bbox * l1 - w_giou * generalized_box_iou(pred, gt)


def _random_case(b=3, n=40, m=5, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, n, c, generator=g) * 2
    xy = torch.rand(b, n, 2, generator=g) * 50
    pred = torch.cat([xy, xy + torch.rand(b, n, 2, generator=g) * 40 + 2], -1)
    gxy = torch.rand(b, m, 2, generator=g) * 50
    gt = torch.cat([gxy, gxy + torch.rand(b, m, 2, generator=g) * 40 + 2], -1)
    labels = torch.randint(0, c, (b, m), generator=g)
    valid = torch.ones(b, m, dtype=torch.bool)
    return logits, pred, gt, labels, valid


def test_cost_equals_reference():
    logits, pred, gt, labels, _ = _random_case()
    cost = MinCostMatcher().cost(logits, pred, gt, labels, IMAGE)
    for i in range(len(logits)):
        torch.testing.assert_close(cost[i], _reference_cost(logits[i], pred[i], gt[i], labels[i]), atol=1e-5, rtol=0)


def test_each_box_gets_its_minimum_cost_location_and_locations_are_distinct():
    for seed, n in enumerate([200, 200, 200, 12, 12, 12]):
        # n=12: few locations for 5 boxes, so argmins collide; n=200: they mostly do not.
        logits, pred, gt, labels, valid = _random_case(n=n, seed=seed)
        index = MinCostMatcher().match(logits, pred, gt, labels, valid, IMAGE)
        assert index.shape == (3, 5) and index.dtype == torch.long
        for i in range(3):
            ref = _reference_cost(logits[i], pred[i], gt[i], labels[i])
            assert index[i].unique().numel() == 5
            argmin = ref.argmin(0)
            if argmin.unique().numel() == 5:  # no collision: exactly OneNet's argmin
                assert torch.equal(index[i], argmin)
            # Always: as cheap as the optimal distinct assignment over all locations (scipy on the full matrix).
            rows, cols = linear_sum_assignment(ref.T.numpy())
            optimum = ref.T[rows, cols].sum()
            torch.testing.assert_close(ref[index[i], torch.arange(5)].sum(), optimum, atol=1e-4, rtol=0)


def test_collisions_resolved_to_the_optimal_distinct_assignment():
    # Three boxes all prefer location 0; the Hungarian answer must beat every other distinct assignment.
    cost = torch.tensor([[0.0, 0.1, 0.2], [1.0, 0.3, 5.0], [2.0, 5.0, 0.9], [0.5, 0.4, 0.6], [9.0, 9.0, 9.0]])
    valid = torch.ones(1, 3, dtype=torch.bool)
    index = MinCostMatcher.match_cost(cost[None], valid)[0]
    assert index.unique().numel() == 3
    best = min(sum(cost[r, c] for c, r in enumerate(rows)) for rows in itertools.permutations(range(5), 3))
    torch.testing.assert_close(cost[index, torch.arange(3)].sum(), best)


def test_collision_in_matched_predictions():
    # Two identical boxes of the same class: both want the same location, they get two distinct ones.
    logits, pred, gt, labels, valid = _random_case(b=1, m=2, seed=3)
    gt[0, 1], labels[0, 1] = gt[0, 0], labels[0, 0]
    index = MinCostMatcher().match(logits, pred, gt, labels, valid, IMAGE)[0]
    ref = _reference_cost(logits[0], pred[0], gt[0], labels[0])
    assert index[0] != index[1]
    # One of them keeps the argmin; the other takes the second-best location.
    order = ref[:, 0].argsort()
    assert set(index.tolist()) == set(order[:2].tolist())


def test_images_without_boxes_and_padding():
    logits, pred, gt, labels, valid = _random_case(b=3, m=4)
    valid[0] = False  # no boxes at all
    valid[1, 2:] = False  # padded
    index = MinCostMatcher().match(logits, pred, gt, labels, valid, IMAGE)
    assert (index[0] == -1).all() and (index[1, 2:] == -1).all() and (index[1, :2] >= 0).all()
    # No targets at all (M = 0) works too.
    empty = MinCostMatcher().match(logits, pred, gt[:, :0], labels[:, :0], valid[:, :0], IMAGE)
    assert empty.shape == (3, 0)


def test_batched_equals_per_image():
    logits, pred, gt, labels, valid = _random_case(b=4, m=6, seed=7)
    counts = [6, 0, 3, 1]
    for i, k in enumerate(counts):
        valid[i, k:] = False
        gt[i, k:] = torch.tensor([0.0, 0.0, 1.0, 1.0])  # padding content must not matter
    matcher = MinCostMatcher()
    batched = matcher.match(logits, pred, gt, labels, valid, IMAGE)
    for i, k in enumerate(counts):
        single = matcher.match(logits[i : i + 1], pred[i : i + 1], gt[i : i + 1, :k], labels[i : i + 1, :k],
                               valid[i : i + 1, :k], IMAGE)  # fmt: skip
        assert torch.equal(batched[i, :k], single[0])


def test_cost_weights_flip_the_choice():
    gt = torch.tensor([[[10.0, 10.0, 30.0, 30.0]]])
    labels = torch.tensor([[1]])
    valid = torch.ones(1, 1, dtype=torch.bool)
    # Location 0: the exact box but a low score for the class; location 1: a worse box, a confident score.
    pred = torch.tensor([[[10.0, 10.0, 30.0, 30.0], [14.0, 14.0, 34.0, 34.0]]])
    logits = torch.tensor([[[0.0, -4.0], [0.0, 4.0]]])

    def choice(**w):
        return int(MinCostMatcher(**w).match(logits, pred, gt, labels, valid, IMAGE)[0, 0])

    assert choice(cost_class=0.0) == 0
    assert choice(cost_bbox=0.0, cost_giou=0.0) == 1
    assert choice(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0) == 1  # OneNet's weights: the score wins here
    assert choice(cost_class=2.0, cost_bbox=5.0, cost_giou=20.0) == 0

    # L1 against GIoU: location 0 is taller (L1 3 px, GIoU 0.57), location 1 shifted (L1 2.8 px, GIoU 0.48).
    gt = torch.tensor([[[0.0, 0.0, 4.0, 4.0]]])
    pred = torch.tensor([[[0.0, 0.0, 4.0, 7.0], [1.4, 0.0, 5.4, 4.0]]])
    logits = torch.zeros(1, 2, 2)
    assert choice(cost_class=0.0, cost_bbox=5.0, cost_giou=2.0) == 0
    assert choice(cost_class=0.0, cost_bbox=5.0, cost_giou=0.0) == 1


def test_one_to_many_positives_inside_boxes_disjoint_and_capped():
    # A 12 x 8 grid of points with stride 8 over a 64 x 96 image.
    ys, xs = torch.meshgrid(torch.arange(8) * 8 + 4.0, torch.arange(12) * 8 + 4.0, indexing="ij")
    points = torch.stack([xs.flatten(), ys.flatten()], 1)
    n = len(points)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, n, 3, generator=g)
    pred = torch.cat([points - 10, points + 10], 1)[None].repeat(2, 1, 1) + torch.randn(2, n, 4, generator=g)
    gt = torch.tensor([[[0.0, 0.0, 60.0, 40.0], [40.0, 20.0, 90.0, 60.0], [70.0, 2.0, 73.0, 5.0]],
                       [[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]]])  # fmt: skip
    labels = torch.tensor([[0, 1, 2], [0, 0, 0]])
    valid = torch.tensor([[True, True, True], [False, False, False]])
    target_of = MinCostMatcher(aux_topk=10).match_one_to_many(logits, pred, points, gt, labels, valid, IMAGE)
    assert target_of.shape == (2, n)
    assert (target_of[1] == -1).all()  # an image without boxes has no positives
    for t in range(2):
        locations = (target_of[0] == t).nonzero().squeeze(1)
        assert 1 <= len(locations) <= 10
        x, y = points[locations, 0], points[locations, 1]
        box = gt[0, t]
        assert ((x > box[0]) & (x < box[2]) & (y > box[1]) & (y < box[3])).all()
    # The two boxes overlap: shared points go to one of them, so together they have 11-20 positives.
    assert 11 <= ((target_of[0] == 0) | (target_of[0] == 1)).sum() <= 20
    # The 3 x 3 box contains no point: it still gets exactly one positive, its cheapest location.
    assert (target_of[0] == 2).sum() == 1
