"""Box normalisation, and the elementwise GIoU against torchvision's pairwise implementation."""

import torch
from torchvision.ops import generalized_box_iou

from onedet.boxes import elementwise_generalized_box_iou, normalize_xyxy


def _random_boxes(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 100
    wh = torch.rand(n, 2, generator=g) * 50 + 1
    return torch.cat([xy, xy + wh], 1)


def test_normalize_divides_by_width_and_height():
    box = torch.tensor([[10.0, 20.0, 30.0, 60.0]])
    assert torch.equal(normalize_xyxy(box, (200, 100)), torch.tensor([[0.1, 0.1, 0.3, 0.3]]))


def test_elementwise_giou_equals_torchvision_diagonal():
    a, b = _random_boxes(64, 1), _random_boxes(64, 2)
    b[:8] = a[:8]  # identical pairs: GIoU 1
    expected = generalized_box_iou(a, b).diagonal()
    got = elementwise_generalized_box_iou(a, b)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(got[:8], torch.ones(8))
    # Broadcasting gives the pairwise matrix.
    torch.testing.assert_close(
        elementwise_generalized_box_iou(a[:, None], b[None]), generalized_box_iou(a, b), atol=1e-5, rtol=0
    )


def test_elementwise_giou_is_finite_for_degenerate_boxes():
    a = torch.tensor([[5.0, 5.0, 5.0, 5.0]], requires_grad=True)
    b = torch.tensor([[5.0, 5.0, 5.0, 5.0]])
    g = elementwise_generalized_box_iou(a, b)
    g.sum().backward()
    assert torch.isfinite(g).all() and torch.isfinite(a.grad).all()
