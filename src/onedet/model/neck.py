"""The neck: ViTDet's simple feature pyramid refined by SegFormer Mix-FFN blocks.

ViTDet (Li et al. 2022, detectron2 `modeling/backbone/vit.py` `SimpleFeaturePyramid`) builds every pyramid level
from the single stride-`p` map of a plain ViT: transposed convs to go finer, identity, max-pooling to go coarser,
then a 1x1 and a 3x3 conv, each followed by a per-pixel (channels-first) LayerNorm. LayerNorm rather than
BatchNorm so small batches and gradient accumulation behave (RF-DETR made the same change).

Unlike detectron2 we first fuse the tapped ViT maps (each layer-normed, then concatenated along channels) into
`channels` with one 1x1 conv: the transposed conv then works on 256 channels instead of 4 x 768, which saves
~20M parameters at base.

Mix-FFN (Xie et al. 2021, SegFormer): `x + fc2(GELU(dwconv3x3(fc1(LN(x)))))`. The depthwise 3x3 conv carries
position information, so the neck needs no position embedding and works at any input size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
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
    """Tapped ViT maps (each `[B, in_channels, H/p, W/p]`) -> one `[B, channels, H/s, W/s]` map per stride `s`."""

    def __init__(
        self,
        *,
        in_channels: int,
        num_inputs: int,
        patch_size: int,
        strides: Sequence[int],
        channels: int = 256,
        num_mixffn: int = 1,
        mixffn_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        self.strides = tuple(strides)
        # A LayerNorm per tap first: a CLIP ViT's residual stream grows with depth, so without it the deepest tap
        # would dominate the concatenation.
        self.tap_norms = nn.ModuleList(LayerNorm2d(in_channels) for _ in range(num_inputs))
        self.fuse = nn.Sequential(nn.Conv2d(in_channels * num_inputs, channels, 1, bias=False), LayerNorm2d(channels))
        self.levels = nn.ModuleList(
            nn.Sequential(
                _resample(channels, stride / patch_size),
                nn.Conv2d(channels, channels, 1, bias=False),
                LayerNorm2d(channels),
                nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                LayerNorm2d(channels),
                *(MixFFN(channels, mixffn_ratio) for _ in range(num_mixffn)),
            )
            for stride in self.strides
        )

    def forward(self, maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        x = self.fuse(torch.cat([norm(m) for norm, m in zip(self.tap_norms, maps)], dim=1))
        return [level(x) for level in self.levels]
