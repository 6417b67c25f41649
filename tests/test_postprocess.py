"""NMS-free decoding against a brute-force reference, and the mapping back to original pixels."""

import torch

from onedet.model.postprocess import decode_topk, to_original


def _brute_force(logits, k):
    out = []
    for img_logits in logits:
        pairs = [
            (float(img_logits[n, c].sigmoid()), n, c)
            for n in range(len(img_logits))
            for c in range(img_logits.shape[1])
        ]
        pairs.sort(key=lambda t: -t[0])
        out.append(pairs[:k])
    return out


def test_decode_matches_brute_force_and_shapes_are_fixed():
    g = torch.Generator().manual_seed(0)
    for n, c, k in [(50, 3, 10), (7, 2, 100), (1, 1, 5), (200, 5, 100)]:
        logits = torch.randn(2, n, c, generator=g) * 3
        boxes = torch.rand(2, n, 4, generator=g) * 100
        out_boxes, scores, labels = decode_topk(logits, boxes, k)
        kk = min(k, n * c)  # K clamps to the number of (location, class) pairs
        assert out_boxes.shape == (2, kk, 4) and scores.shape == (2, kk) and labels.shape == (2, kk)
        assert labels.dtype == torch.int64
        for i, ref in enumerate(_brute_force(logits, k)):
            torch.testing.assert_close(scores[i], torch.tensor([s for s, _, _ in ref]))
            assert labels[i].tolist() == [c_ for _, _, c_ in ref]
            torch.testing.assert_close(out_boxes[i], boxes[i, [n_ for _, n_, _ in ref]])


def test_one_location_can_report_two_classes():
    logits = torch.full((1, 4, 2), -10.0)
    logits[0, 2] = torch.tensor([3.0, 2.0])
    boxes = torch.arange(16.0).reshape(1, 4, 4)
    out_boxes, _, labels = decode_topk(logits, boxes, 2)
    assert labels[0].tolist() == [0, 1]
    assert torch.equal(out_boxes[0], boxes[0, [2, 2]])


def test_to_original_divides_by_scale_and_clips():
    boxes = torch.tensor([[[32.0, 16.0, 64.0, 48.0], [-4.0, -2.0, 300.0, 120.0]], [[10.0, 10.0, 20.0, 20.0]] * 2])
    scale = torch.tensor([0.5, 2.0])
    orig = torch.tensor([[100, 400], [50, 60]])  # (h, w)
    got = to_original(boxes, scale, orig)
    expected = torch.tensor([[[64.0, 32.0, 128.0, 96.0], [0.0, 0.0, 400.0, 100.0]], [[5.0, 5.0, 10.0, 10.0]] * 2])
    torch.testing.assert_close(got, expected)
    # Without a size: only the division (600 > 400 stays).
    assert to_original(boxes, scale)[0, 1, 2] == 600
