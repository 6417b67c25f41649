"""The neck: the folded tap norms equal LayerNorm modules followed by the fuse conv, in value and in gradient."""

from __future__ import annotations

import torch

from onedet.model.neck import SimpleFeaturePyramid


def _reference_fuse(neck: SimpleFeaturePyramid, maps: list[torch.Tensor]) -> torch.Tensor:
    # The textbook order: each tap's LayerNorm2d with its own scale and shift, concatenated, then the 1x1 conv.
    return neck.fuse(torch.cat([norm(m) for norm, m in zip(neck.tap_norms, maps)], dim=1))


def test_folded_tap_norms_equal_layernorm_then_conv():
    torch.manual_seed(0)
    neck = SimpleFeaturePyramid(in_channels=12, num_inputs=3, patch_size=16, strides=(8, 16, 32), channels=16)
    with torch.no_grad():  # scales and shifts far from their initial 1 and 0, so that folding them matters
        for norm in neck.tap_norms:
            norm.weight.uniform_(0.2, 3.0)
            norm.bias.normal_(0, 2.0)
    # The residual stream of a deep ViT: large offsets and scales per tap.
    maps = [torch.randn(2, 12, 5, 7) * (i + 1) * 10 + i for i in range(3)]

    taps = neck.normalize_taps(maps)
    assert taps.shape == (2, 36, 5, 7)
    torch.testing.assert_close(taps.mean(1).abs().max(), torch.tensor(0.0), atol=0.1, rtol=0)  # normalised

    params = [neck.fuse[0].weight, *(n.weight for n in neck.tap_norms), *(n.bias for n in neck.tap_norms)]
    out = neck(maps)
    reference_levels = [level(neck.refine(_reference_fuse(neck, maps))) for level in neck.levels]
    for a, b in zip(out, reference_levels):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    grads = torch.autograd.grad(sum(o.square().sum() for o in out), params)
    reference_grads = torch.autograd.grad(sum(o.square().sum() for o in reference_levels), params)
    for a, b in zip(grads, reference_grads):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)


def test_levels_have_their_strides_and_refine_once():
    neck = SimpleFeaturePyramid(in_channels=8, num_inputs=2, patch_size=16, strides=(8, 16, 32), channels=16)
    maps = [torch.randn(1, 8, 4, 6) for _ in range(2)]
    assert [tuple(level.shape[-2:]) for level in neck(maps)] == [(8, 12), (4, 6), (2, 3)]
    # One refinement at the patch stride, not one per level: the levels hold only a resampling and a norm.
    assert all(len(level) == 2 for level in neck.levels)
