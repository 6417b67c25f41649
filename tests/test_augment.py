"""BatchAugment keeps boxes on their objects: checked on shapes whose true pixel extent is known."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from onedet.data import augment as augment_module
from onedet.data import buffers as buffers_module
from onedet.data.augment import FILL, BatchAugment
from onedet.data.synthetic import PLAIN_BACKGROUND, render_synthetic

NO_COLOUR = dict(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)


def _extent(image: torch.Tensor, threshold: float = 0.2) -> torch.Tensor | None:
    """Continuous xyxy extent of the pixels that differ from the grey background by more than `threshold`."""
    ys, xs = torch.nonzero((image - FILL).abs().amax(0) > threshold, as_tuple=True)
    if len(xs) == 0:
        return None
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)


def _rectangles(n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One solid rectangle per image on the letterbox grey: its clipped box is always its visible extent."""
    rng = np.random.default_rng(seed)
    images = torch.full((n, 3, size, size), FILL)
    boxes = torch.zeros(n, 1, 4)
    for i in range(n):
        w, h = rng.integers(size // 8, size // 2, 2)
        x0, y0 = rng.integers(0, size - w), rng.integers(0, size - h)
        images[i, :, y0 : y0 + h, x0 : x0 + w] = torch.tensor(rng.choice([0.0, 1.0], 3) * 0.8 + 0.1)[:, None, None]
        images[i, 0, y0 : y0 + h, x0 : x0 + w] = 1.0  # never grey
        boxes[i, 0] = torch.tensor([x0, y0, x0 + w, y0 + h])
    return images, boxes


def test_flip_is_exact():
    images, boxes = _rectangles(4, 40, seed=0)
    valid = torch.ones(4, 1, dtype=torch.bool)
    aug = BatchAugment(flip=1.0, scale=(1.0, 1.0), aspect=(1.0, 1.0), **NO_COLOUR)
    out, out_boxes, out_valid = aug(images, boxes, valid, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, torch.flip(images, dims=[-1]), atol=1e-5, rtol=0)
    expected = boxes.clone()
    expected[..., 0], expected[..., 2] = 40 - boxes[..., 2], 40 - boxes[..., 0]  # continuous coords: x -> W - x
    torch.testing.assert_close(out_boxes, expected)
    assert out_valid.all()


def test_identity_when_everything_is_off():
    images, boxes = _rectangles(3, 32, seed=1)
    valid = torch.ones(3, 1, dtype=torch.bool)
    aug = BatchAugment(flip=0.0, scale=(1.0, 1.0), aspect=(1.0, 1.0), **NO_COLOUR)
    out, out_boxes, _ = aug(images, boxes, valid, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, images, atol=1e-5, rtol=0)
    torch.testing.assert_close(out_boxes, boxes)


@pytest.mark.parametrize("sizes", [None, (48, 96)])
def test_boxes_bound_the_pixels_after_crop_scale_flip(sizes):
    images, boxes = _rectangles(64, 64, seed=2)
    valid = torch.ones(64, 1, dtype=torch.bool)
    aug = BatchAugment(scale=(0.5, 2.5), aspect=(0.7, 1.4), sizes=sizes, **NO_COLOUR)
    out, out_boxes, out_valid = aug(images, boxes, valid, generator=torch.Generator().manual_seed(3))
    side = out.shape[-1]
    clipped = masked = 0
    for i in range(64):
        extent = _extent(out[i], threshold=0.3)
        if out_valid[i, 0]:
            assert extent is not None
            # bilinear edges: the thresholded pixel extent is within a pixel of the continuous box
            torch.testing.assert_close(out_boxes[i, 0], extent, atol=1.0, rtol=0)
            assert out_boxes[i, 0].min() >= 0 and out_boxes[i, 0].max() <= side
            clipped += bool((out_boxes[i, 0] == 0).any() or (out_boxes[i, 0] == side).any())
        else:
            masked += 1
            assert torch.equal(out_boxes[i, 0], torch.zeros(4))
    assert clipped > 0 and masked > 0  # the settings above do push boxes out of the image


def _marked_rectangles(n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`_rectangles` whose red channel says which image each came from (0.2 + 0.2 i, i < 4); never grey (green 1)."""
    images, boxes = _rectangles(n, size, seed)
    for i in range(n):
        x0, y0, x1, y1 = boxes[i, 0].int().tolist()
        images[i, 0, y0:y1, x0:x1], images[i, 1, y0:y1, x0:x1] = 0.2 + 0.2 * i, 1.0
    return images, boxes


@pytest.mark.parametrize("sizes", [None, (48, 96)])
def test_a_mosaic_keeps_every_tiles_boxes_on_their_objects(sizes):
    """Four images, each with a rectangle marked with its own colour, tiled 2 x 2 and cropped (zoom, aspect, flip):
    each valid box, in `mosaic_slots`' layout, bounds exactly the pixels of its own image's rectangle."""
    n, size = 4, 64
    images, boxes = _marked_rectangles(n, size, seed=5)
    valid = torch.ones(n, 1, dtype=torch.bool)
    source = augment_module.mosaic_slots(torch.arange(n)[:, None])  # which image each output slot's box is of
    aug = BatchAugment(scale=(0.6, 1.6), aspect=(0.8, 1.25), sizes=sizes, **NO_COLOUR)
    shown = 0
    for seed in range(12):
        out, out_boxes, out_valid = aug(images, boxes, valid, generator=torch.Generator().manual_seed(seed), mosaic=1)
        assert out_boxes.shape == (n, 4, 4) and out_valid.shape == (n, 4)
        for i in range(n):
            for slot in range(4):
                j = int(source[i, slot])
                mask = ((out[i, 0] - (0.2 + 0.2 * j)).abs() < 0.02) & (out[i, 1] > 0.98)
                ys, xs = torch.nonzero(mask, as_tuple=True)
                if out_valid[i, slot]:
                    assert len(xs) > 0, "a valid box with none of its object in view"
                    extent = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
                    # within 1.5 px: the colour test leaves out the edge pixels bilinear sampling blends with grey
                    torch.testing.assert_close(out_boxes[i, slot], extent, atol=1.5, rtol=0)
                    shown += 1
                else:
                    assert torch.equal(out_boxes[i, slot], torch.zeros(4))
                    # left out only when the window's edge cuts it (then `min_size` / `min_visible` decide)
                    side = out.shape[-1]
                    assert len(xs) == 0 or min(xs.min(), ys.min()) <= 1 or max(xs.max(), ys.max()) >= side - 2
    assert shown > 4 * 12, "the mosaics show objects of several images"


def test_mosaic_draws_its_own_share_and_leaves_the_rest_as_they_were():
    """mosaic=0 is the plain augmentation, draw for draw; with 0 < p < 1 an image left untiled keeps only its own
    boxes, and a batch of one is never tiled."""
    images, boxes = _marked_rectangles(4, 48, seed=6)
    valid = torch.ones(4, 1, dtype=torch.bool)
    aug = BatchAugment(**NO_COLOUR)
    plain = aug(images, boxes, valid, generator=torch.Generator().manual_seed(0))
    off = aug(images, boxes, valid, generator=torch.Generator().manual_seed(0), mosaic=0.0)
    for a, b in zip(plain, off):
        assert torch.equal(a, b)
    tiled_any = untiled_any = False
    for seed in range(8):
        out, _, out_valid = aug(images, boxes, valid, generator=torch.Generator().manual_seed(seed), mosaic=0.5)
        for i in range(4):
            if not out_valid[i, 1:].any():  # untiled (or its neighbours' boxes out of view): its own pixels only
                marks = out[i, 0][out[i, 1] > 0.98]
                if len(marks) and (marks - (0.2 + 0.2 * i)).abs().max() < 0.02:
                    untiled_any = True
            else:
                tiled_any = True
    assert tiled_any and untiled_any
    one = aug(images[:1], boxes[:1], valid[:1], generator=torch.Generator().manual_seed(0), mosaic=1.0)
    assert one[1].shape == (1, 1, 4) and not augment_module.tiles(1, 1.0)


def _ramps(n: int, size: int) -> torch.Tensor:
    """Images whose pixels hold their own source coordinates: x / W, y / H, and 1 (content, not fill)."""
    centres = (torch.arange(size) + 0.5) / size
    ramp = torch.stack([centres.expand(size, size), centres[:, None].expand(size, size), torch.ones(size, size)])
    return ramp.expand(n, 3, size, size).contiguous()


def _fit_axis(values: torch.Tensor, positions: torch.Tensor) -> tuple[float, float]:
    """Least-squares line source = slope * (position + 0.5) + intercept, over interior pixels only (bilinear
    sampling clamps at a patch's edges)."""
    values, positions = values[2:-2].double(), positions[2:-2].double() + 0.5
    dp = positions - positions.mean()
    slope = (dp * (values - values.mean())).sum() / (dp**2).sum()
    return float(slope), float(values.mean() - slope * positions.mean())


def test_masking_follows_an_independent_map():
    """Augment coordinate ramps with the same seed: their pixels tell where each output pixel came from, which
    maps every box (in or out of view) independently of the augmentation's own box code."""
    size, n = 64, 48
    _, boxes = _rectangles(n, size, seed=8)
    valid = torch.ones(n, 1, dtype=torch.bool)
    aug = BatchAugment(scale=(0.5, 2.5), aspect=(0.7, 1.4), min_size=2.0, min_visible=0.3, **NO_COLOUR)
    coords, out_boxes, out_valid = aug(_ramps(n, size), boxes, valid, generator=torch.Generator().manual_seed(9))
    checked = {True: 0, False: 0}
    for i in range(n):
        content = coords[i, 2] > 0.99
        rows, cols = content.any(1).nonzero().squeeze(1), content.any(0).nonzero().squeeze(1)
        if len(rows) < 8 or len(cols) < 8:
            continue
        ax, bx = _fit_axis(coords[i, 0, rows[len(rows) // 2], cols] * size, cols)
        ay, by = _fit_axis(coords[i, 1, rows, cols[len(cols) // 2]] * size, rows)
        x0, y0, x1, y1 = boxes[i, 0].tolist()
        xs = sorted([(x0 - bx) / ax, (x1 - bx) / ax])  # a flip makes the slope negative
        ys = sorted([(y0 - by) / ay, (y1 - by) / ay])
        full = (xs[1] - xs[0]) * (ys[1] - ys[0])
        cx = [min(max(v, 0), size) for v in xs]
        cy = [min(max(v, 0), size) for v in ys]
        w, h = cx[1] - cx[0], cy[1] - cy[0]
        if out_valid[i, 0]:
            torch.testing.assert_close(out_boxes[i, 0], torch.tensor([cx[0], cy[0], cx[1], cy[1]]), atol=0.05, rtol=0)
            assert w >= 2.0 - 0.05 and h >= 2.0 - 0.05 and w * h >= (0.3 - 0.01) * full
        else:
            assert w < 2.0 + 0.05 or h < 2.0 + 0.05 or w * h < (0.3 + 0.01) * full
        checked[bool(out_valid[i, 0])] += 1
    assert checked[True] > 10 and checked[False] > 0


def test_synthetic_shapes_stay_boxed():
    images, targets = render_synthetic(120, 64, seed=4, plain=True)
    singles = [i for i, (b, _) in enumerate(targets) if len(b) == 1]
    x = torch.from_numpy(images[singles]).permute(0, 3, 1, 2).float() / 255
    assert PLAIN_BACKGROUND == (114, 114, 114)  # the plain background is the letterbox fill
    boxes = torch.stack([torch.from_numpy(targets[i][0]) for i in singles])
    valid = torch.ones(len(singles), 1, dtype=torch.bool)
    # zoomed out only, so every shape stays whole in view and its box must be tight on all four sides
    aug = BatchAugment(scale=(0.5, 1.0), **NO_COLOUR)
    out, out_boxes, out_valid = aug(x, boxes, valid, generator=torch.Generator().manual_seed(5))
    assert out_valid.all()
    for i in range(len(singles)):
        extent = _extent(out[i], threshold=0.25 * float((x[i] - FILL).abs().amax()))
        torch.testing.assert_close(out_boxes[i, 0], extent, atol=1.0, rtol=0)


def test_clip_and_mask():
    aug = BatchAugment(min_size=2.0, min_visible=0.3)
    boxes = torch.tensor([[[-10.0, 5, 10, 15], [-19, 0, 1, 10], [5, 5, 6.5, 20], [50, 50, 70, 70], [1, 1, 5, 5]]])
    valid = torch.tensor([[True, True, True, True, False]])
    out, keep = aug._clip_and_mask(boxes, valid, width=64, height=60)
    assert keep.tolist() == [[True, False, False, True, False]]  # half in: kept; 5% in; 1.5 px wide; invalid
    torch.testing.assert_close(out[0, 0], torch.tensor([0.0, 5, 10, 15]))
    torch.testing.assert_close(out[0, 3], torch.tensor([50.0, 50, 64, 60]))
    assert (out[0, [1, 2, 4]] == 0).all()


@pytest.mark.parametrize("side", [16, 260])  # 260 x 260 px: two colour tiles on the CPU, the second partial
def test_colour_matches_torchvision(side):
    images = torch.rand(2, 3, side, side, generator=torch.Generator().manual_seed(side))
    # contrast's mean grey comes from a strided ~64 x 64 sample: exact up to 64 px, beyond it off by 0.4 x the
    # sample mean's error (about 0.18 / 65 for uniform noise: 1e-3), the same shift for every pixel
    contrast_atol = 2e-4 if side <= 64 else 5e-3
    for kwargs, reference, atol in (
        (dict(brightness=(1.3, 1.3)), lambda im: TF.adjust_brightness(im, 1.3), 2e-4),
        (dict(contrast=(0.6, 0.6)), lambda im: TF.adjust_contrast(im, 0.6), contrast_atol),
        (dict(saturation=(1.5, 1.5)), lambda im: TF.adjust_saturation(im, 1.5), 2e-4),  # torchvision: 0.2989 red
    ):
        aug = BatchAugment(**{**NO_COLOUR, **kwargs})
        torch.testing.assert_close(aug.jitter_colour(images), reference(images), atol=atol, rtol=0)


def test_hue_keeps_luma_and_grey():
    images = torch.rand(2, 3, 8, 8)
    images[1] = images[1, :1]  # a grey image has no hue to turn
    out = BatchAugment(**{**NO_COLOUR, "hue": (0.25, 0.25)}).jitter_colour(images)
    luma = torch.tensor([0.299, 0.587, 0.114])
    inside = (out > 0) & (out < 1)  # where nothing was clamped
    diff = torch.einsum("bchw,c->bhw", out - images, luma)
    assert diff[inside.all(1)].abs().max() < 1e-5
    torch.testing.assert_close(out[1], images[1], atol=1e-5, rtol=0)
    assert (out[0] - images[0]).abs().max() > 0.05


def test_eval_mode_is_identity():
    images, boxes = _rectangles(2, 32, seed=6)
    valid = torch.ones(2, 1, dtype=torch.bool)
    out = BatchAugment().eval()(images, boxes, valid)
    assert out[0] is images and out[1] is boxes and out[2] is valid


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_same_result_on_gpu():
    images, boxes = _rectangles(4, 32, seed=7)
    valid = torch.ones(4, 1, dtype=torch.bool)
    aug = BatchAugment()
    cpu = aug(images, boxes, valid, generator=torch.Generator().manual_seed(0))
    gpu = aug(images.cuda(), boxes.cuda(), valid.cuda(), generator=torch.Generator().manual_seed(0))
    for a, b in zip(cpu, gpu):
        torch.testing.assert_close(a, b.cpu(), atol=1e-4, rtol=0)


def test_uint8_path_matches_float_path():
    """The loader hands uint8 to the augmentation (fast uint8 resampling on the CPU); floats give the same."""
    images, targets = render_synthetic(6, 48, seed=9)
    x8 = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    boxes = torch.zeros(6, 6, 4)
    valid = torch.zeros(6, 6, dtype=torch.bool)
    for i, (b, _) in enumerate(targets):
        boxes[i, : len(b)], valid[i, : len(b)] = torch.from_numpy(b), True
    aug = BatchAugment(sizes=(40, 56))
    a = aug(x8, boxes, valid, generator=torch.Generator().manual_seed(1))
    b = aug(x8.float() / 255, boxes, valid, generator=torch.Generator().manual_seed(1))
    assert a[0].dtype == torch.float32 and a[0].min() >= 0 and a[0].max() <= 1
    assert (a[0] - b[0]).abs().max() < 3 / 255  # uint8 rounding of the resampled pixels, then the colour map
    assert torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])


def test_colour_of_uint8_matches_colour_of_float():
    """The tiled CPU path converts uint8 tiles itself: the same map as on floats scaled to [0, 1]."""
    x8 = torch.randint(0, 256, (3, 3, 200, 390), dtype=torch.uint8)  # 78,000 px: two tiles
    aug = BatchAugment(hue=0.1)
    a = aug.jitter_colour(x8, torch.Generator().manual_seed(2))
    b = aug.jitter_colour(x8.float() / 255, torch.Generator().manual_seed(2))
    assert a.dtype == torch.float32 and a.min() >= 0 and a.max() <= 1
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert (a - x8.float() / 255).abs().max() > 0.05  # it did jitter


def test_output_buffers_are_recycled_but_never_overwritten_while_held():
    images, _ = render_synthetic(4, 32, seed=10)
    x8 = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    boxes, valid = torch.zeros(4, 1, 4), torch.zeros(4, 1, dtype=torch.bool)
    aug = BatchAugment(buffers=2)
    run = lambda seed: aug(x8, boxes, valid, generator=torch.Generator().manual_seed(seed))[0]  # noqa: E731
    first = run(0)
    expected = first.clone()
    view = first[1:, 0]  # a view alone must keep the whole buffer from reuse
    del first
    second = run(1)
    torch.testing.assert_close(view, expected[1:, 0], atol=0, rtol=0)
    assert not torch.equal(second, expected)
    third = run(2)  # beyond capacity while both are held: a fresh tensor, still correct
    torch.testing.assert_close(view, expected[1:, 0], atol=0, rtol=0)
    torch.testing.assert_close(run(0), expected, atol=0, rtol=0)  # same seed, same batch, from any buffer
    if buffers_module.use_count is not None:
        ptr = second.data_ptr()
        del second, third
        assert run(3).data_ptr() == ptr  # released: its memory is used again
        assert len(aug._outputs) <= 2


def test_copies_start_with_empty_pools():
    aug = BatchAugment()
    aug(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), torch.zeros(1, 1, 4), torch.zeros(1, 1, dtype=torch.bool))
    for clone in (copy.deepcopy(aug), pickle.loads(pickle.dumps(aug))):
        assert len(clone._outputs) == 0 and clone.scale == aug.scale
        out = clone(
            torch.zeros(1, 3, 8, 8, dtype=torch.uint8), torch.zeros(1, 1, 4), torch.zeros(1, 1, dtype=torch.bool)
        )
        assert out[0].shape == (1, 3, 8, 8)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_tiled_colour_map_matches_the_batched_one(dtype):
    """The CPU's tiled map (with a last, partial tile) against the one batched op the GPU runs."""
    gen = torch.Generator().manual_seed(11)
    x = torch.randint(0, 256, (3, 3, 1000), generator=gen).to(dtype)
    matrix, offset = torch.randn(3, 3, 3, generator=gen) / 200, torch.rand(3, 3, 1, generator=gen) / 4
    batched = augment_module._map_colour(x, matrix, offset, torch.empty(3, 3, 1000), None)
    tiled = augment_module._map_colour(x, matrix, offset, torch.empty(3, 3, 1000), 384)
    torch.testing.assert_close(tiled, batched, atol=1e-6, rtol=0)
    reference = (matrix.double() @ x.double() + offset.double()).clamp(0, 1).float()
    torch.testing.assert_close(batched, reference, atol=1e-5, rtol=0)
    assert (batched == 0).sum() > 0 and (batched == 1).sum() > 0  # both clamps were exercised


def test_mix_up_blends_pairs_and_keeps_both_images_boxes():
    b, m = 5, 3
    images = torch.rand(b, 3, 8, 8)
    boxes = torch.rand(b, m, 4) * 8
    labels = torch.randint(0, 4, (b, m))
    valid = torch.rand(b, m) < 0.7
    original = images.clone()
    generator = torch.Generator().manual_seed(1)
    mixed, boxes2, labels2, valid2 = augment_module.mix_up(images, boxes, labels, valid, 0.6, generator)
    chosen = torch.rand(b, generator=torch.Generator().manual_seed(1)) < 0.6  # the same draw, independently
    # this seed mixes images 1, 2 (whose partner is mixed too: read before written) and 4 (with image 0)
    assert chosen.tolist() == [False, True, True, False, True]
    assert boxes2.shape == (b, 2 * m, 4) and labels2.shape == valid2.shape == (b, 2 * m)
    for i in range(b):
        j = (i + 1) % b
        expected = (original[i] + original[j]) / 2 if chosen[i] else original[i]
        torch.testing.assert_close(mixed[i], expected)
        # the image's own targets first, unchanged; then its partner's valid ones, or nothing
        assert torch.equal(boxes2[i, :m], boxes[i]) and torch.equal(labels2[i, :m], labels[i])
        assert torch.equal(valid2[i, :m], valid[i])
        assert torch.equal(valid2[i, m:], valid[j] if chosen[i] else torch.zeros(m, dtype=torch.bool))
        keep = valid2[i, m:]
        assert torch.equal(boxes2[i, m:][keep], boxes[j][keep]) and torch.equal(labels2[i, m:][keep], labels[j][keep])
        assert not boxes2[i, m:][~keep].any()  # invalid slots hold zeros, as the store's padding does


@pytest.mark.parametrize(("b", "p"), [(1, 1.0), (4, 0.0)])
def test_mix_up_leaves_a_batch_of_one_or_p_zero_alone(b, p):
    images, boxes = torch.rand(b, 3, 8, 8), torch.rand(b, 2, 4)
    labels, valid = torch.zeros(b, 2, dtype=torch.long), torch.ones(b, 2, dtype=torch.bool)
    out = augment_module.mix_up(images.clone(), boxes, labels, valid, p)
    for got, want in zip(out, (images, boxes, labels, valid)):
        assert torch.equal(got, want)
