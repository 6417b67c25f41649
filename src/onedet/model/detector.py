"""`Detector`: CLIP normalisation + padding, ViT backbone, simple feature pyramid, shared NMS-free head.

`Detector(cfg)` builds the architecture with random weights (what checkpoint loading wants: no download);
`build_detector(cfg)` also loads the backbone weights that `cfg.pretrained` names.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
import torch.nn.functional as F
from timm.layers.helpers import is_exporting
from torch import nn

from onedet.config import PRESETS, ModelConfig
from onedet.cpu import flush_denormals
from onedet.model.backbone import ViTBackbone, load_backbone_weights
from onedet.model.head import DetectionHead
from onedet.model.neck import SimpleFeaturePyramid


class DetectorOutput(NamedTuple):
    """Dense predictions over all N locations of all pyramid levels (the contract of docs/design.md)."""

    logits: torch.Tensor
    """`[B, N, C]` pre-sigmoid class scores (float32)."""
    boxes_xyxy: torch.Tensor
    """`[B, N, 4]` boxes in input pixels (float32)."""
    points: torch.Tensor
    """`[N, 2]` (x, y) location centres in input pixels."""
    strides: torch.Tensor
    """`[N]` stride of each location's level, in pixels."""
    aux_logits: torch.Tensor | None
    """`[B, N, C]` of the one-to-many auxiliary branch, only in training mode with `aux_head`; else None."""
    aux_boxes_xyxy: torch.Tensor | None
    """`[B, N, 4]` of the auxiliary branch, or None."""


class Detector(nn.Module):
    """`forward(images [B, 3, H, W] float in [0, 1]) -> DetectorOutput`.

    The detector normalises with the backbone's mean/std (buffers), then pads H and W at the bottom/right to a
    multiple of `cfg.input_multiple` (patch size x window size) with zeros in normalised space, i.e. the mean
    colour (close to the letterbox grey). Locations over the padding are ordinary locations (trained as
    background), so N depends on the padded size. Attributes `backbone`, `neck`, `head` are the three parts.
    """

    pixel_mean: torch.Tensor  # buffers (registered in __init__)
    pixel_std: torch.Tensor

    def __init__(self, cfg: ModelConfig, init_backbone: bool = True) -> None:
        """`init_backbone=False` skips the backbone's random init (weights are loaded right after)."""
        flush_denormals()  # before any torch thread exists: they inherit the mode (onedet/cpu.py)
        super().__init__()
        self.config = cfg
        self.register_buffer("pixel_mean", torch.tensor(cfg.pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.pixel_std).view(1, 3, 1, 1), persistent=False)
        self.backbone = ViTBackbone(
            image_size=cfg.image_size,
            patch_size=cfg.patch_size,
            embed_dim=cfg.embed_dim,
            depth=cfg.depth,
            num_heads=cfg.num_heads,
            mlp_ratio=cfg.mlp_ratio,
            act=cfg.act,
            pre_norm=cfg.pre_norm,
            norm_eps=cfg.norm_eps,
            window_size=cfg.window_size,
            global_blocks=cfg.global_blocks,
            taps=cfg.taps,
            frozen=cfg.freeze_backbone,
            init_weights=init_backbone,
        )
        self.neck = SimpleFeaturePyramid(
            in_channels=cfg.embed_dim,
            num_inputs=len(cfg.taps),
            patch_size=cfg.patch_size,
            strides=cfg.strides,
            channels=cfg.neck_channels,
            num_mixffn=cfg.num_mixffn,
            mixffn_ratio=cfg.mixffn_ratio,
        )
        self.head = DetectionHead(
            channels=cfg.neck_channels,
            num_classes=cfg.num_classes,
            strides=cfg.strides,
            num_convs=cfg.head_convs,
            aux=cfg.aux_head,
            peak_filter=cfg.peak_filter,
        )

    def forward(self, images: torch.Tensor) -> DetectorOutput:
        return self.forward_head(self.forward_features(images))

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Normalise, pad, backbone, and the neck's parameter-free normalisation of the tapped maps:
        `[B, 3, H, W]` in [0, 1] -> `[B, T*C, h, w]` float32 (T tapped blocks of C channels).

        The first half of `forward` (timm's `forward_features`): what a frozen backbone contributes, so it can run
        under its own autocast, without autograd, or once into the feature cache.
        """
        x = (images - self.pixel_mean) / self.pixel_std
        multiple = self.config.input_multiple
        pad_h, pad_w = (-x.shape[-2]) % multiple, (-x.shape[-1]) % multiple
        if is_exporting() or pad_h or pad_w:  # always while exporting: no branch on the example's shape
            x = F.pad(x, (0, pad_w, 0, pad_h))
        return self.neck.normalize_taps(self.backbone(x))

    def forward_head(self, features: torch.Tensor) -> DetectorOutput:
        """The second half of `forward`: the neck's pyramid and the head on `forward_features`' output."""
        return DetectorOutput(*self.head(self.neck.pyramid(features), with_aux=self.training))

    def set_backbone_frozen(self, frozen: bool) -> None:
        """Freeze (no gradients, eval mode) or unfreeze the backbone, e.g. before adding LoRA or full fine-tuning."""
        self.backbone.set_frozen(frozen)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by part: `{"backbone": [...], "neck": [...], "head": [...]}` (frozen ones left out)."""
        return {
            name: [p for p in getattr(self, name).parameters() if p.requires_grad]
            for name in ("backbone", "neck", "head")
        }


def build_detector(cfg: ModelConfig) -> Detector:
    """The detector of `cfg`, with the backbone weights of `cfg.pretrained` loaded (None: random, as asked)."""
    model = Detector(cfg, init_backbone=cfg.pretrained is None)
    load_backbone_weights(model.backbone, cfg.pretrained, hub_name=cfg.backbone)
    return model


def count_parameters(cfg: ModelConfig) -> int:
    """Parameters of the detector of `cfg`, counted on the meta device (no memory, no initialisation cost)."""
    with torch.device("meta"):
        model = Detector(dataclasses.replace(cfg, pretrained=None), init_backbone=False)
    return sum(p.numel() for p in model.parameters())


def describe_presets() -> dict[str, dict[str, int]]:
    """`{preset: {"params": int, "image_size": int}}` for `onedet presets`."""
    table = {}
    for name in PRESETS:
        cfg = ModelConfig.from_preset(name)
        table[name] = {"params": count_parameters(cfg), "image_size": cfg.image_size}
    return table
