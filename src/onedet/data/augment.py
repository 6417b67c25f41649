"""Box-aware batch augmentation on the batch's device: flip, scale jitter / random resized crop, colour jitter.

Written with plain torch ops rather than kornia, for three reasons measured or read here: flip, crop and scale
become one affine resample per sample (one `grid_sample` for the whole batch, not three passes); the boxes are
mapped with the same affine in continuous pixel coordinates (kornia's flip maps x to (W-1)-x, off by one for
boxes, and it does not clip boxes after a crop); and hue is a rotation in YIQ space (a 3x3 matrix per image),
cheap on the CPU where kornia's HSV hue costs ~4x the rest of the colour jitter.

Random parameters are drawn on the CPU from a caller-supplied `torch.Generator`, so a batch's augmentation is a
function of that seed alone (the loader seeds it per batch: exact resume, same result on any device), and only
the pixel work runs on the device. In `eval()` mode the module is the identity.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FILL = 114 / 255
"""Value of pixels that come from outside the image (the letterbox grey)."""

# RGB <-> YIQ: a hue shift is a rotation of the (I, Q) chroma plane; Y (luma) is kept.
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)
_GRAY = torch.tensor([0.299, 0.587, 0.114])


def _uniform(n: int, low: float, high: float, generator: torch.Generator | None) -> Tensor:
    return torch.rand(n, generator=generator) * (high - low) + low


def _factors(x: float | tuple[float, float]) -> tuple[float, float]:
    return x if isinstance(x, tuple) else (max(0.0, 1 - x), 1 + x)


class BatchAugment(nn.Module):
    """Augment a batch: images float [B, 3, H, W] in [0, 1], boxes_xyxy [B, M, 4] in pixels, valid bool [B, M].

    Geometry (one affine per sample): zoom by a factor in `scale` (>1 crops into the image, <1 shrinks it onto
    a grey canvas), aspect ratio jitter in `aspect`, a random position, a horizontal flip with probability
    `flip`, and, when `sizes` is given, an output side drawn per batch from `sizes` (multi-scale training).
    Colour (per sample): brightness, contrast and saturation factors in [1 - x, 1 + x] (or a given range), and a
    hue shift in [-hue, hue] of a full turn (a rotation of the YIQ chroma plane: cheap, and close to HSV hue).
    Boxes follow the pixels, are clipped to the output, and become invalid (and zero) when a side is under
    `min_size` pixels or less than `min_visible` of their area stays in the image.
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
    ) -> None:
        super().__init__()
        self.flip, self.scale, self.aspect, self.sizes = flip, scale, aspect, sizes
        # a float x means the factor range (1 - x, 1 + x) (hue: the shift range (-x, x)), as in torchvision
        self.brightness, self.contrast, self.saturation = _factors(brightness), _factors(contrast), _factors(saturation)
        self.hue = hue if isinstance(hue, tuple) else (-hue, hue)
        self.min_size, self.min_visible = min_size, min_visible

    def forward(
        self, images: Tensor, boxes_xyxy: Tensor, valid: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Returns (images [B, 3, S', S'], boxes_xyxy [B, M, 4], valid [B, M]); inputs are not modified."""
        if not self.training:
            return images, boxes_xyxy, valid
        images = self.jitter_colour(images, generator)
        return self.transform_geometry(images, boxes_xyxy, valid, generator)

    def jitter_colour(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Brightness, contrast, saturation and hue as per-sample linear maps of the pixels, [B, 3, H, W]."""
        b = images.shape[0]
        dev, dt = images.device, images.dtype
        bright = _uniform(b, *self.brightness, generator).to(dev, dt)
        contr = _uniform(b, *self.contrast, generator).to(dev, dt)
        sat = _uniform(b, *self.saturation, generator)  # goes into the CPU colour matrix below
        angle = _uniform(b, *self.hue, generator) * 2 * math.pi
        gray_w = _GRAY.to(dev, dt)

        # clamped after each step, as torchvision's ColorJitter does
        out = (images * bright.view(b, 1, 1, 1)).clamp_(0, 1)
        mean = torch.einsum("bchw,c->b", out, gray_w) / (out.shape[2] * out.shape[3])
        out = ((out - mean.view(b, 1, 1, 1)) * contr.view(b, 1, 1, 1) + mean.view(b, 1, 1, 1)).clamp_(0, 1)
        # saturation and hue together as one 3x3 colour matrix per image: M = YIQ^-1 . diag/rot . YIQ
        cos, sin = torch.cos(angle) * sat, torch.sin(angle) * sat
        chroma = torch.zeros(b, 3, 3)
        chroma[:, 0, 0] = 1
        chroma[:, 1, 1], chroma[:, 1, 2], chroma[:, 2, 1], chroma[:, 2, 2] = cos, -sin, sin, cos
        colour = (_YIQ_TO_RGB @ chroma @ _RGB_TO_YIQ).to(dev, dt)
        out = torch.einsum("bij,bjhw->bihw", colour, out)
        return out.clamp_(0, 1)

    def transform_geometry(
        self, images: Tensor, boxes_xyxy: Tensor, valid: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Flip + zoom + crop/pad as one affine resample; boxes mapped, clipped and masked the same way."""
        b, _, h, w = images.shape
        out_h = out_w = (
            int(self.sizes[int(torch.randint(len(self.sizes), (1,), generator=generator))]) if self.sizes else None
        )
        out_h, out_w = (out_h, out_w) if out_h else (h, w)

        # The output window, in input pixels: size (win_w, win_h) at (x0, y0); zoom > 1 makes the window smaller.
        zoom = torch.exp(_uniform(b, math.log(self.scale[0]), math.log(self.scale[1]), generator))
        ratio = torch.exp(_uniform(b, math.log(self.aspect[0]), math.log(self.aspect[1]), generator))
        win_w, win_h = w / zoom * ratio.sqrt(), h / zoom / ratio.sqrt()
        # Uniform placement: inside the image when the window is smaller, around it when larger.
        x0 = torch.minimum(w - win_w, torch.zeros(b)) + torch.rand(b, generator=generator) * (w - win_w).abs()
        y0 = torch.minimum(h - win_h, torch.zeros(b)) + torch.rand(b, generator=generator) * (h - win_h).abs()
        flip = torch.rand(b, generator=generator) < self.flip

        # Output pixel u (continuous, 0..out_w) shows input x = x0 + u * win_w / out_w (or mirrored when flipped).
        # affine_grid works in [-1, 1] coordinates with align_corners=False, i.e. n = 2 * x / W - 1 on both sides.
        sx, sy = win_w / w, win_h / h
        tx = (2 * x0 + win_w) / w - 1
        ty = (2 * y0 + win_h) / h - 1
        theta = torch.zeros(b, 2, 3)
        theta[:, 0, 0] = torch.where(flip, -sx, sx)
        theta[:, 0, 2] = tx
        theta[:, 1, 1] = sy
        theta[:, 1, 2] = ty
        dev, dt = images.device, images.dtype
        grid = F.affine_grid(theta.to(dev, dt), [b, 3, out_h, out_w], align_corners=False)
        # zeros padding around (images - FILL) then + FILL: outside pixels become the letterbox grey
        out = F.grid_sample(images - FILL, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + FILL

        # Boxes: the inverse map, x_out = (x_in - x0) * out_w / win_w, then mirrored (x -> out_w - x) if flipped.
        kx, ky = (out_w / win_w).to(boxes_xyxy), (out_h / win_h).to(boxes_xyxy)
        x0, y0, flip = x0.to(boxes_xyxy), y0.to(boxes_xyxy), flip.to(boxes_xyxy.device)
        bx0 = (boxes_xyxy[..., 0] - x0[:, None]) * kx[:, None]
        bx1 = (boxes_xyxy[..., 2] - x0[:, None]) * kx[:, None]
        by0 = (boxes_xyxy[..., 1] - y0[:, None]) * ky[:, None]
        by1 = (boxes_xyxy[..., 3] - y0[:, None]) * ky[:, None]
        fx0 = torch.where(flip[:, None], out_w - bx1, bx0)
        fx1 = torch.where(flip[:, None], out_w - bx0, bx1)
        mapped = torch.stack([fx0, by0, fx1, by1], dim=-1)
        return out, *self._clip_and_mask(mapped, valid, out_w, out_h)

    def _clip_and_mask(self, boxes_xyxy: Tensor, valid: Tensor, width: int, height: int) -> tuple[Tensor, Tensor]:
        area = (boxes_xyxy[..., 2] - boxes_xyxy[..., 0]) * (boxes_xyxy[..., 3] - boxes_xyxy[..., 1])
        limit = boxes_xyxy.new_tensor([width, height, width, height])
        clipped = torch.minimum(boxes_xyxy.clamp(min=0), limit)
        cw, ch = clipped[..., 2] - clipped[..., 0], clipped[..., 3] - clipped[..., 1]
        keep = valid & (cw >= self.min_size) & (ch >= self.min_size) & (cw * ch >= self.min_visible * area)
        return torch.where(keep[..., None], clipped, torch.zeros_like(clipped)), keep
