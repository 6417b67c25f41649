"""Box-aware batch augmentation on the batch's device: flip, scale jitter / random resized crop, mosaic, colour
jitter.

Plain torch ops rather than kornia, for reasons measured here (2-core CPU, 16 x 3 x 640 x 640, BENCHMARKS.md):
- Geometry is axis-aligned (zoom, aspect, shift, flip), so each sample is one crop + one `F.interpolate` pasted
  into a grey canvas, and the boxes go through the exact affine that the integer crop/paste rectangles define.
  On the CPU the resampling and the canvas stay uint8 (torch's vectorised uint8 bilinear kernel; a quarter of
  the bytes of a float canvas), several times cheaper than `affine_grid` + `grid_sample` on floats; kornia's
  flip also maps x to (W-1)-x, off by one for boxes, and it does not clip boxes after a crop.
- Brightness, contrast, saturation and hue are all linear maps of the pixel values, so they compose into one
  3x3 matrix plus an offset per image (which also rescales 0..255 to [0, 1]). Hue is a rotation of the YIQ
  chroma plane (kornia's HSV hue costs ~4x the rest of the jitter). On the CPU the map runs in cache-sized
  tiles: each tile is converted to float, mapped with one `addmm` and clamped while it is in cache, and written
  into the output once: the uint8 -> float conversion, the colour jitter and the scaling are one pass.
- On the CPU the uint8 canvas and the float output come from recycled buffers (`onedet.data.buffers`, the
  loader's pool too): a fresh 78 MB batch is a fresh mapping whose page faults cost more than filling it, and a
  batch the caller keeps is never overwritten. On a GPU, torch's caching allocator already recycles memory
  and the whole batch is mapped with one `baddbmm`.

Mosaic (YOLOv4's, as Ultralytics trains with it) tiles four images of the batch 2 x 2 and takes the same zoomed
window out of the tiling as out of a single image, around the tiling's centre: objects keep their scale, and each
image shows parts of four. The tiling is never made: each image's part of the window is resampled straight into
the output (up to four `F.interpolate` calls for the sample instead of one), so it costs no memory. Hand-written
because kornia's `RandomMosaic` builds the whole 2 x 2 canvas before it crops, and it would not share the integer
crop rectangles the boxes here are mapped with.

Random parameters are drawn on the CPU from a caller-supplied `torch.Generator`, so a batch's augmentation is a
function of that seed alone (the loader seeds it per batch: exact resume), and only pixel work runs on the
device. In `eval()` mode the module only converts to float.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from onedet.data.buffers import BufferPool

FILL = 114 / 255
"""Value of pixels that come from outside the image (the letterbox grey), as a float in [0, 1]."""

# RGB <-> YIQ: a hue shift is a rotation of the (I, Q) chroma plane and a saturation change scales it; Y (luma)
# is kept, and grey pixels (I = Q = 0) stay grey.
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)
_GRAY = torch.tensor([0.299, 0.587, 0.114])

_TILE = 65536
"""Pixels per colour tile on the CPU: 3 x 64 Ki floats in and out (768 KB each) stay in L2; the fastest of the
tile sizes measured (BENCHMARKS.md, Data loading)."""


def _uniform(n: int, low: float, high: float, generator: torch.Generator | None) -> Tensor:
    return torch.rand(n, generator=generator) * (high - low) + low


def _factors(x: float | tuple[float, float]) -> tuple[float, float]:
    return x if isinstance(x, tuple) else (max(0.0, 1 - x), 1 + x)


def to_float(images: Tensor) -> Tensor:
    """uint8 [B, 3, H, W] -> float32 in [0, 1]; float images are returned as they are."""
    return images.float().div_(255) if images.dtype == torch.uint8 else images


def _snap(start: float, length: float, size: int, out_size: int) -> tuple[int, int, int, int]:
    """The window [start, start + length) of an axis of `size` pixels, shown on `out_size` output pixels, as
    whole-pixel rectangles: input [i0, i1) (the part inside the image) lands on output [o0, o1)."""
    k = out_size / length
    i0 = min(max(round(start), 0), size - 1)
    i1 = max(min(round(start + length), size), i0 + 1)
    o0 = min(max(round((i0 - start) * k), 0), out_size - 1)
    o1 = max(min(round((i1 - start) * k), out_size), o0 + 1)
    return i0, i1, o0, o1


MOSAIC_TILES = 4
"""Images per mosaic (2 x 2)."""


def mosaic_slots(x: Tensor) -> Tensor:
    """The box slots of a mosaic batch: a per-box tensor [B, M, ...] -> [B, 4M, ...], where slot k * M + j of image i
    is box j of image (i + k) % B, the k-th tile of its mosaic (k = 0 is the image itself). `BatchAugment` returns
    boxes and `valid` in this layout when it tiles; labels (or any other per-box value) follow with this function."""
    return torch.cat([x.roll(-k, 0) for k in range(MOSAIC_TILES)], dim=1)


def tiles(batch_size: int, mosaic: float) -> bool:
    """Whether a batch of `batch_size` images with mosaic probability `mosaic` comes back in `mosaic_slots`' layout
    (it does whenever a sample could be tiled, whatever the draws: the box slots do not change from batch to
    batch). A batch of one is never tiled (its mosaic would be one image four times)."""
    return mosaic > 0 and batch_size >= 2


def _map_colour(x: Tensor, matrix: Tensor, offset: Tensor, out: Tensor, tile: int | None) -> Tensor:
    """out = clamp(matrix @ x + offset, 0, 1) per image: x [B, 3, N] (any dtype), matrix [B, 3, 3], offset
    [B, 3, 1], out float [B, 3, N]. With `tile`, tile by tile (convert, map and clamp while each tile is in
    cache: one write of the output), else as one batched op."""
    if tile is None:
        return torch.baddbmm(offset, matrix, x.float(), out=out).clamp_(0, 1)
    b, c, n = x.shape
    scratch = torch.empty(c, min(tile, n), device=x.device)
    for i in range(b):
        for start in range(0, n, tile):
            stop = min(start + tile, n)
            src = scratch[:, : stop - start]
            src.copy_(x[i, :, start:stop])
            torch.addmm(offset[i], matrix[i], src, out=out[i, :, start:stop]).clamp_(0, 1)
    return out


class BatchAugment(nn.Module):
    """Augment a batch: images uint8 or float [B, 3, H, W], boxes_xyxy [B, M, 4] in pixels, valid bool [B, M].

    Geometry: zoom by a factor in `scale` (>1 crops into the image, <1 shrinks it onto a grey canvas), aspect
    ratio jitter in `aspect`, a random position, a horizontal flip with probability `flip`, and, when `sizes` is
    given, an output side drawn per batch from `sizes` (multi-scale training). With probability `mosaic` (an
    argument of the call, so a loader can turn it off for the last epochs) a sample's window is taken out of the 2 x 2
    tiling of its image and the next three of the batch instead (module docstring); the boxes then come back in
    `mosaic_slots`' layout, four times the slots. Colour (per sample): brightness,
    contrast and saturation factors in [1 - x, 1 + x] (or a given range), and a hue shift in [-hue, hue] of a
    full turn (YIQ rotation: cheap, close to HSV hue). Boxes follow the pixels, are clipped to the output, and
    become invalid (and zero) when a side is under `min_size` pixels or less than `min_visible` of their area
    stays in the image. Returns float images in [0, 1].

    On the CPU, up to `buffers` output batches are recycled once the caller has dropped them (module docstring);
    the pool's memory (e.g. 78 MB per 16 x 640 px batch) is kept while the module lives. `buffers=0` turns
    recycling off.
    """

    def __init__(
        self,
        *,
        flip: float = 0.5,
        scale: tuple[float, float] = (0.6, 1.6),
        aspect: tuple[float, float] = (0.8, 1.25),
        sizes: tuple[int, ...] | None = None,
        brightness: float | tuple[float, float] = 0.3,
        contrast: float | tuple[float, float] = 0.3,
        saturation: float | tuple[float, float] = 0.3,
        hue: float | tuple[float, float] = 0.02,
        min_size: float = 2.0,
        min_visible: float = 0.3,
        buffers: int = 12,
    ) -> None:
        super().__init__()
        self.flip, self.scale, self.aspect, self.sizes = flip, scale, aspect, sizes
        # a float x means the factor range (1 - x, 1 + x) (hue: the shift range (-x, x)), as in torchvision
        self.brightness, self.contrast, self.saturation = _factors(brightness), _factors(contrast), _factors(saturation)
        self.hue = hue if isinstance(hue, tuple) else (-hue, hue)
        self.min_size, self.min_visible = min_size, min_visible
        # the loader's default (2 workers, prefetch 2) holds up to ~10 output batches at once (loader.py); the
        # canvases live only during a call, one per thread calling at once
        # named so as not to shadow nn.Module.buffers() (the method every module has, e.g. for DDP's buffer sync)
        self.num_buffers = buffers
        self._outputs, self._canvases = BufferPool(buffers), BufferPool(max(0, min(buffers, 4)))

    def __getstate__(self) -> dict[str, Any]:
        # pools hold a lock and scratch memory: a copy (deepcopy, pickling for worker processes) starts empty
        state = self.__dict__.copy()
        state["_outputs"] = state["_canvases"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._outputs, self._canvases = BufferPool(self.num_buffers), BufferPool(max(0, min(self.num_buffers, 4)))

    def _empty(self, pool: BufferPool, like: Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        """An uninitialised tensor on `like`'s device: recycled on the CPU, from the caching allocator elsewhere."""
        if like.device.type == "cpu":
            return pool.take(shape, dtype)
        return torch.empty(shape, dtype=dtype, device=like.device)

    def forward(
        self,
        images: Tensor,
        boxes_xyxy: Tensor,
        valid: Tensor,
        generator: torch.Generator | None = None,
        mosaic: float = 0.0,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Returns (images float [B, 3, S', S'] in [0, 1], boxes_xyxy [B, M', 4], valid [B, M']); M' is M, or 4M
        when the batch `tiles` (`mosaic_slots`). No input is modified."""
        if not self.training:
            return to_float(images), boxes_xyxy, valid
        unit = 1 / 255 if images.dtype == torch.uint8 else 1.0
        # the canvas keeps the input's scale (0..255 for uint8, uint8 itself on the CPU); the colour step is the
        # conversion to float in [0, 1]
        canvas, boxes_xyxy, valid = self.transform_geometry(images, boxes_xyxy, valid, generator, mosaic)
        return self.jitter_colour(canvas, generator, unit), boxes_xyxy, valid

    def jitter_colour(
        self, images: Tensor, generator: torch.Generator | None = None, unit: float | None = None
    ) -> Tensor:
        """Brightness, contrast, saturation and hue as one affine colour map per image -> float [B, 3, H, W] in
        [0, 1]. `unit` is the value of 1/255 of the input (default: 1/255 for uint8, else 1)."""
        b, c, h, w = images.shape
        if unit is None:
            unit = 1 / 255 if images.dtype == torch.uint8 else 1.0
        bright = _uniform(b, *self.brightness, generator)
        contr = _uniform(b, *self.contrast, generator)
        sat = _uniform(b, *self.saturation, generator)
        angle = _uniform(b, *self.hue, generator) * 2 * math.pi

        # contrast pulls towards the mean grey level; a strided sample of ~64x64 pixels estimates it well
        step = max(1, min(h, w) // 64)
        sample = images[:, :, ::step, ::step].float()
        # stays on the device: no host sync per batch
        mean = torch.einsum("bchw,c->b", sample, _GRAY.to(sample)) * (unit / (sample.shape[2] * sample.shape[3]))
        # out = clamp(contr * (bright * S x) + (1 - contr) * bright * mean): S (saturation + hue) keeps grey grey
        cos, sin = torch.cos(angle) * sat, torch.sin(angle) * sat
        chroma = torch.zeros(b, 3, 3)
        chroma[:, 0, 0] = 1
        chroma[:, 1, 1], chroma[:, 1, 2], chroma[:, 2, 1], chroma[:, 2, 2] = cos, -sin, sin, cos
        matrix = ((_YIQ_TO_RGB @ chroma @ _RGB_TO_YIQ) * (contr * bright * unit).view(b, 1, 1)).to(sample)
        offset = (((1 - contr) * bright).to(sample) * mean).view(b, 1, 1).expand(b, c, 1)
        out = self._empty(self._outputs, images, (b, c, h * w), torch.float32)
        # the GPU has no cache to tile for: one batched op there
        tile = _TILE if images.device.type == "cpu" else None
        return _map_colour(images.reshape(b, c, h * w), matrix, offset, out, tile).view(b, c, h, w)

    def transform_geometry(
        self,
        images: Tensor,
        boxes_xyxy: Tensor,
        valid: Tensor,
        generator: torch.Generator | None = None,
        mosaic: float = 0.0,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Zoom + crop/pad + flip (+ mosaic); boxes mapped, clipped and masked the same way. The output is on the
        input's scale (0..255 for uint8 input): uint8 on the CPU for uint8 input, float otherwise."""
        b, c, h, w = images.shape
        if self.sizes:
            out_h = out_w = int(self.sizes[int(torch.randint(len(self.sizes), (1,), generator=generator))])
        else:
            out_h, out_w = h, w

        # The output window, in input pixels: size (win_w, win_h) at (x0, y0); zoom > 1 makes the window smaller.
        zoom = torch.exp(_uniform(b, math.log(self.scale[0]), math.log(self.scale[1]), generator))
        ratio = torch.exp(_uniform(b, math.log(self.aspect[0]), math.log(self.aspect[1]), generator))
        win_w, win_h = w / zoom * ratio.sqrt(), h / zoom / ratio.sqrt()
        # uniform placement: inside the image when the window is smaller, around it when it is larger
        x0 = torch.minimum(w - win_w, torch.zeros(b)) + torch.rand(b, generator=generator) * (w - win_w).abs()
        y0 = torch.minimum(h - win_h, torch.zeros(b)) + torch.rand(b, generator=generator) * (h - win_h).abs()
        flip = torch.rand(b, generator=generator) < self.flip
        n_tiles = MOSAIC_TILES if tiles(b, mosaic) else 1
        tiled = torch.zeros(b, dtype=torch.bool)
        if n_tiles > 1:  # drawn only then: without mosaic the draws (and so the batches) are what they always were
            tiled = torch.rand(b, generator=generator) < mosaic
            # the same window, in the 2w x 2h tiling, with the tiling's centre at 1/4..3/4 of it on each axis
            # (Keras' Mosaic offsets): every tile shows in it
            x0 = torch.where(tiled, w - win_w * _uniform(b, 0.25, 0.75, generator), x0)
            y0 = torch.where(tiled, h - win_h * _uniform(b, 0.25, 0.75, generator), y0)

        # uint8 bilinear (antialiased when shrinking) has a fast CPU kernel; elsewhere work in float
        work = images if images.device.type == "cpu" or images.dtype != torch.uint8 else images.float()
        fill = 114 if images.dtype == torch.uint8 else FILL
        canvas = self._empty(self._canvases, work, (b, c, out_h, out_w), work.dtype)
        # per sample and tile: x_out = x_in * kx + tx, y_out = y_in * ky + ty (tile k of sample i is image (i + k) % b)
        affine = torch.zeros(b, n_tiles, 4)
        # One interpolate per sample and tile shown (no per-pixel Python): each sample has its own window size.
        for i in range(b):
            if not tiled[i]:
                window = float(x0[i]), float(y0[i]), float(win_w[i]), float(win_h[i])
                rect = self._paste(canvas[i], work[i], *window, bool(flip[i]))
                affine[i, :] = rect[0]  # a sample left alone keeps only tile 0's boxes (below), mapped by this
                ox0, ox1, oy0, oy1 = rect[1]
                # grey around the patch: every canvas pixel is written once
                canvas[i, :, :oy0].fill_(fill)
                canvas[i, :, oy1:].fill_(fill)
                canvas[i, :, oy0:oy1, :ox0].fill_(fill)
                canvas[i, :, oy0:oy1, ox1:].fill_(fill)
            else:
                canvas[i].fill_(fill)
                ww, wh = float(win_w[i]), float(win_h[i])
                for tile in range(n_tiles):
                    # the window in tile `tile`'s own pixels; a tile that does not show keeps the window's exact map
                    # (its boxes land outside the output and are masked)
                    tx0, ty0 = float(x0[i]) - (tile % 2) * w, float(y0[i]) - (tile // 2) * h
                    affine[i, tile] = torch.tensor([out_w / ww, -tx0 * out_w / ww, out_h / wh, -ty0 * out_h / wh])
                    if min(tx0 + ww, w) - max(tx0, 0) >= 1 and min(ty0 + wh, h) - max(ty0, 0) >= 1:  # it shows
                        rect = self._paste(canvas[i], work[(i + tile) % b], tx0, ty0, ww, wh, bool(flip[i]))
                        affine[i, tile] = rect[0]

        if n_tiles > 1:
            boxes_xyxy = mosaic_slots(boxes_xyxy)
            own = torch.arange(n_tiles * valid.shape[1], device=valid.device) < valid.shape[1]  # tile 0's slots
            valid = mosaic_slots(valid) & (own | tiled.to(valid.device)[:, None])
        m = boxes_xyxy.shape[1] // n_tiles
        affine = affine.to(boxes_xyxy).repeat_interleave(m, dim=1)  # [b, n_tiles * m, 4]: each slot's tile's map
        flip = flip.to(boxes_xyxy.device)[:, None]
        kx, tx, ky, ty = (affine[..., k] for k in range(4))
        bx0, bx1 = boxes_xyxy[..., 0] * kx + tx, boxes_xyxy[..., 2] * kx + tx
        by0, by1 = boxes_xyxy[..., 1] * ky + ty, boxes_xyxy[..., 3] * ky + ty
        # continuous coordinates: a flip maps x to W - x (and swaps the box's left and right edges)
        fx0, fx1 = torch.where(flip, out_w - bx1, bx0), torch.where(flip, out_w - bx0, bx1)
        mapped = torch.stack([fx0, by0, fx1, by1], dim=-1)
        return canvas, *self._clip_and_mask(mapped, valid, out_w, out_h)

    @staticmethod
    def _paste(
        canvas: Tensor, image: Tensor, x0: float, y0: float, win_w: float, win_h: float, flip: bool
    ) -> tuple[Tensor, tuple[int, int, int, int]]:
        """Resample the part of `image` [C, h, w] inside the window (x0, y0, win_w, win_h) onto its place in `canvas`
        [C, H, W], which shows the whole window (mirrored, patch and place, with `flip`: cheaper than flipping the
        whole canvas afterwards). Returns the affine (kx, tx, ky, ty) of the whole-pixel rectangles used (image ->
        canvas pixels, before the flip) and the canvas rectangle written (ox0, ox1, oy0, oy1)."""
        _, h, w = image.shape
        out_h, out_w = canvas.shape[-2:]
        ix0, ix1, ox0, ox1 = _snap(x0, win_w, w, out_w)
        iy0, iy1, oy0, oy1 = _snap(y0, win_h, h, out_h)
        patch = F.interpolate(
            image[None, :, iy0:iy1, ix0:ix1],
            size=(oy1 - oy0, ox1 - ox0),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )
        kx, ky = (ox1 - ox0) / (ix1 - ix0), (oy1 - oy0) / (iy1 - iy0)
        affine = torch.tensor([kx, ox0 - ix0 * kx, ky, oy0 - iy0 * ky])
        if flip:
            patch, (ox0, ox1) = patch.flip(-1), (out_w - ox1, out_w - ox0)
        canvas[:, oy0:oy1, ox0:ox1] = patch[0]
        return affine, (ox0, ox1, oy0, oy1)

    def _clip_and_mask(self, boxes_xyxy: Tensor, valid: Tensor, width: int, height: int) -> tuple[Tensor, Tensor]:
        area = (boxes_xyxy[..., 2] - boxes_xyxy[..., 0]) * (boxes_xyxy[..., 3] - boxes_xyxy[..., 1])
        limit = boxes_xyxy.new_tensor([width, height, width, height])
        clipped = torch.minimum(boxes_xyxy.clamp(min=0), limit)
        cw, ch = clipped[..., 2] - clipped[..., 0], clipped[..., 3] - clipped[..., 1]
        keep = valid & (cw >= self.min_size) & (ch >= self.min_size) & (cw * ch >= self.min_visible * area)
        return torch.where(keep[..., None], clipped, torch.zeros_like(clipped)), keep


MIXUP_WEIGHT = 0.5
"""The partner image's share of a mixed image. YOLOX's detection mixup blends at a fixed 0.5 and keeps every box of
both images at full weight: an object seen at half contrast is still an object to find (a random share, as in
classification's mixup, would call for box weights the losses here do not take)."""


def mix_up(
    images: Tensor,
    boxes_xyxy: Tensor,
    labels: Tensor,
    valid: Tensor,
    p: float,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Detection mixup within a batch: with probability `p` each image is blended (`MIXUP_WEIGHT`) with the next
    image of the batch (the last with the first), and takes that image's valid boxes and labels as well: boxes
    [B, M, 4] -> [B, 2M, 4], labels and valid [B, M] -> [B, 2M] (the added slots invalid where no mixing happened).

    Images float [B, 3, H, W] of one size (after `BatchAugment`; mixed in place, as `BatchAugment`'s output is
    the caller's own buffer). Partners come from the same batch, so no extra image is read; the draw comes from
    `generator`, so a batch's mixing is a function of its seed (exact resume). A batch of one, or `p` 0, is
    returned as it is.

    Hand-written: kornia's `RandomMixUpV2` mixes images and class labels for classification, not boxes."""
    b = images.shape[0]
    if b < 2 or p <= 0:
        return images, boxes_xyxy, labels, valid
    if not images.is_floating_point():
        raise TypeError(f"mix_up blends float images, got {images.dtype}")
    mixed = (torch.rand(b, generator=generator) < p).to(images.device)
    # image i's partner is image i + 1: the batch rolled by one (a copy, so read before the blend writes)
    images.lerp_(images.roll(-1, 0), (mixed * MIXUP_WEIGHT).to(images.dtype).view(b, 1, 1, 1))
    keep = mixed[:, None] & valid.roll(-1, 0)
    return (
        images,
        torch.cat([boxes_xyxy, torch.where(keep[..., None], boxes_xyxy.roll(-1, 0), 0)], dim=1),
        torch.cat([labels, torch.where(keep, labels.roll(-1, 0), 0)], dim=1),
        torch.cat([valid, keep], dim=1),
    )
