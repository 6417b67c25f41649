"""The neck: ViTDet's simple feature pyramid, with one refinement by SegFormer Mix-FFN shared by its levels.

ViTDet (Li et al. 2022, detectron2 `modeling/backbone/vit.py` `SimpleFeaturePyramid`) builds every pyramid level
from the single stride-`p` map of a plain ViT: transposed convs to go finer, identity, max-pooling to go coarser.
LayerNorm rather than BatchNorm so small batches and gradient accumulation behave (RF-DETR made the same change).

Unlike detectron2 we first fuse the tapped ViT maps (each layer-normed, then concatenated along channels) into
`channels` with one 1x1 conv: the transposed conv then works on 192 channels instead of 4 x 768, which saves
~20M parameters at base.

The fused map is refined once, at the backbone's own stride, and only then resampled to each level (ViTDet
refines each level after resampling, with a 1x1 and a 3x3 conv). The ViT has no information finer than its
patch: a stride-8 level is an upsampled stride-16 map, so refining it separately spent four times the compute of
stride 16 on the same information. That per-level refinement was most of the neck and head's cost, and the
neck and head are what a `--cache-features` training step leaves (BENCHMARKS.md, Training). Each level keeps a
LayerNorm after its resampling (max-pooling shifts the statistics).

Mix-FFN (Xie et al. 2021, SegFormer): `x + fc2(GELU(dwconv3x3(fc1(LN(x)))))`. The depthwise 3x3 conv carries
position information, so the neck needs no position embedding and works at any input size.

The per-tap LayerNorms are split in two: the normalisation, which has no parameters (`normalize_taps`: a frozen
backbone's normalised taps are what the feature cache stores), and their scale and shift, folded into the fuse
conv's weight and bias at every forward (`W diag(gamma)`, `W beta`: the same function and the same parameters, so
their gradients are unchanged). The fuse conv then needs no gradient for its 4 x 768-channel input when the
backbone is frozen, and no LayerNorm runs over that input while training on cached features.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import nn


class MixFFN(nn.Module):
    """SegFormer Mix-FFN as a residual block on NCHW maps: `[B, C, H, W] -> [B, C, H, W]`."""

    def __init__(self, channels: int, ratio: float = 4.0) -> None:
        super().__init__()
        hidden = int(channels * ratio)
        self.norm = LayerNorm2d(channels)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.act(self.dwconv(self.fc1(self.norm(x)))))


def _resample(channels: int, factor: float) -> nn.Module:
    """Change the stride of a map by `factor` (output stride / input stride): 1/4, 1/2, 1, 2 or 4."""
    if factor == 0.25:  # two transposed convs, as ViTDet's stride-4 branch
        return nn.Sequential(
            nn.ConvTranspose2d(channels, channels, 2, stride=2),
            LayerNorm2d(channels),
            nn.GELU(),
            nn.ConvTranspose2d(channels, channels, 2, stride=2),
        )
    if factor == 0.5:
        return nn.ConvTranspose2d(channels, channels, 2, stride=2)
    if factor == 1:
        return nn.Identity()
    if factor in (2, 4):
        return nn.MaxPool2d(kernel_size=int(factor), stride=int(factor))
    raise ValueError(f"unsupported pyramid factor {factor}")


class SimpleFeaturePyramid(nn.Module):
    """Tapped ViT maps (each `[B, in_channels, H/p, W/p]`) -> one `[B, channels, H/s, W/s]` map per stride `s`.

    `forward(maps)` is `pyramid(normalize_taps(maps))`; the two halves are public for the feature cache.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_inputs: int,
        patch_size: int,
        strides: Sequence[int],
        channels: int = 192,
        num_mixffn: int = 1,
        mixffn_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        self.strides = tuple(strides)
        # A LayerNorm per tap first: a CLIP ViT's residual stream grows with depth, so without it the deepest tap
        # would dominate the concatenation. Only their weights and eps are used (see the module docstring).
        self.tap_norms = nn.ModuleList(LayerNorm2d(in_channels) for _ in range(num_inputs))
        # Run as its two parts by `pyramid` (the conv with the tap norms folded in); a Sequential keeps the keys.
        self.fuse = nn.Sequential(nn.Conv2d(in_channels * num_inputs, channels, 1, bias=False), LayerNorm2d(channels))
        self.refine = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            LayerNorm2d(channels),
            *(MixFFN(channels, mixffn_ratio) for _ in range(num_mixffn)),
        )
        self.levels = nn.ModuleList(
            nn.Sequential(_resample(channels, stride / patch_size), LayerNorm2d(channels)) for stride in self.strides
        )

    def normalize_taps(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """The taps' LayerNorms without their scale and shift, concatenated: `[B, num_inputs * in_channels, h, w]`
        (float32, also under autocast). Has no parameters."""
        return torch.cat(
            [
                F.layer_norm(m.permute(0, 2, 3, 1), m.shape[1:2], eps=norm.eps).permute(0, 3, 1, 2)
                for norm, m in zip(cast("Sequence[LayerNorm2d]", self.tap_norms), maps)
            ],
            dim=1,
        )

    def pyramid(self, taps: torch.Tensor) -> list[torch.Tensor]:
        """Normalised taps (`normalize_taps`) -> the pyramid maps."""
        conv = cast(nn.Conv2d, self.fuse[0])
        norms = cast("Sequence[LayerNorm2d]", self.tap_norms)
        gamma = torch.cat([norm.weight for norm in norms])
        beta = torch.cat([norm.bias for norm in norms])
        weight = conv.weight * gamma[None, :, None, None]  # (out, in, 1, 1)
        x = self.fuse[1](F.conv2d(taps, weight, conv.weight.flatten(1) @ beta))
        x = self.refine(x)
        return [level(x) for level in self.levels]

    def forward(self, maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return self.pyramid(self.normalize_taps(maps))
