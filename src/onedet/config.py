"""The model configuration: one typed dataclass, and the presets as small named overrides of it.

Torch-free, so the CLI and checkpoint readers can use it without importing the model. The style follows
litgpt's `Config.from_name`: a preset is a dict of the fields that differ from the defaults (which are `base`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from onedet.errors import OnedetError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)


LOSS_WEIGHTS: dict[str, float] = {"focal": 2.0, "l1": 5.0, "giou": 2.0}
"""OneNet's weights of the focal, L1 and GIoU terms: the one source of the loss weights and of the matching cost's
(`ModelConfig.loss_weights`, `MinCostMatcher`, `DetectionLoss.from_config`)."""


def _default_loss_weights() -> dict[str, float]:
    # The auxiliary one-to-many branch uses the same weights as the one-to-one terms.
    return {**LOSS_WEIGHTS, **{f"aux_{k}": v for k, v in LOSS_WEIGHTS.items()}}


@dataclass
class ModelConfig:
    """Everything needed to build a `Detector`; saved as a JSON dict in every checkpoint (`model.json`)."""

    # --- backbone ---------------------------------------------------------------------------------------------
    backbone: str = "vit_base_patch16_clip_quickgelu_224.openai"
    """timm model name of the backbone, used to fetch weights when `pretrained="hub"` (the architecture itself
    is built from the fields below). OpenAI CLIP weights need the `quickgelu` variant."""
    embed_dim: int = 768
    """Width of the ViT."""
    depth: int = 12
    """Number of transformer blocks."""
    num_heads: int = 12
    """Attention heads per block."""
    patch_size: int = 16
    """Patch size in pixels; the backbone's feature maps have this stride."""
    mlp_ratio: float = 4.0
    """Hidden width of the transformer MLP relative to `embed_dim`."""
    act: str = "quick_gelu"
    """MLP activation: "quick_gelu" (OpenAI CLIP weights) or "gelu" (LAION/DataComp CLIP, ImageNet ViTs)."""
    pre_norm: bool = True
    """A LayerNorm after the position embedding (CLIP's `ln_pre`); False for ImageNet-style timm ViTs."""
    norm_eps: float = 1e-5
    """LayerNorm epsilon of the backbone (CLIP 1e-5, timm ImageNet ViTs 1e-6)."""
    pixel_mean: tuple[float, float, float] = CLIP_MEAN
    """Per-channel mean the backbone was trained with (the model normalises `[0, 1]` input itself)."""
    pixel_std: tuple[float, float, float] = CLIP_STD
    """Per-channel standard deviation the backbone was trained with."""
    image_size: int = 640
    """Training / export input size in pixels (square letterbox); position embeddings are resized to its grid
    once. Must be a multiple of `patch_size * window_size`."""
    window_size: int = 10
    """Side of an attention window, in patches (10 at 640 px with patch 16: 4 x 4 windows)."""
    global_blocks: tuple[int, ...] = (2, 5, 8, 11)
    """Indices of the blocks that attend over the whole image; all others attend within their window."""
    taps: tuple[int, ...] = (2, 5, 8, 11)
    """Indices of the blocks whose outputs feed the neck (concatenated along channels)."""
    freeze_backbone: bool = True
    """Freeze the backbone (no gradients, kept in eval mode). Training unfreezes it for LoRA / full fine-tuning."""
    pretrained: str | None = "hub"
    """Backbone weights: "hub" (download `backbone` through timm), a local file (`.safetensors`, `.pt`, `.pth`
    in timm or open_clip key layout), or None (random initialisation, only when asked for explicitly)."""

    # --- neck -------------------------------------------------------------------------------------------------
    neck_channels: int = 192
    """Channels of every pyramid level. 192 rather than ViTDet's 256: with one 3x3 conv in each head tower this
    keeps the neck and head's training cost (forward + backward) near a tenth of a frozen ViT-B's forward at 640
    px, so that cached features make epochs 10x faster (BENCHMARKS.md, Training)."""
    num_mixffn: int = 1
    """Mix-FFN blocks refining the fused map at the patch stride (once, before it is resampled to the levels)."""
    mixffn_ratio: float = 4.0
    """Hidden width of a Mix-FFN block relative to `neck_channels`."""
    strides: tuple[int, ...] = (8, 16, 32)
    """Pyramid levels by stride in pixels, increasing; each the patch size times 1/4, 1/2, 1, 2 or 4."""

    # --- head -------------------------------------------------------------------------------------------------
    num_classes: int = 80
    """Number of classes (labels 0..C-1)."""
    head_convs: int = 1
    """Depthwise-separable 3x3 conv layers in each of the head's towers (classification, box, and the aux
    branch's two). At stride 8 each costs as much as the neck's refinement at stride 16."""
    aux_head: bool = True
    """Add the one-to-many auxiliary prediction layers (YOLOv10-style dual assignment), used only in training."""
    peak_filter: bool = True
    """At inference, keep a one-to-one class score only where it is the maximum of its 3x3 neighbourhood on its
    level (CenterNet's peak extraction: one MaxPool, no IoU, no threshold); removes duplicates on adjacent cells."""
    topk: int = 100
    """Detections kept per image by the NMS-free decoding."""
    loss_weights: dict[str, float] = field(default_factory=_default_loss_weights)
    """Weight of each named loss term: `total = sum(w[k] * terms[k])` (OneNet: focal 2, L1 5, GIoU 2). The
    one-to-one matching cost weighs its focal, L1 and GIoU parts with `focal`, `l1` and `giou` too."""

    def __post_init__(self) -> None:
        for name in ("pixel_mean", "pixel_std", "global_blocks", "taps", "strides"):
            setattr(self, name, tuple(getattr(self, name)))
        self.loss_weights = dict(self.loss_weights)
        problems = []
        if self.embed_dim % self.num_heads:
            problems.append(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.act not in ("quick_gelu", "gelu"):
            problems.append(f"act must be 'quick_gelu' or 'gelu', not {self.act!r}")
        bad = [i for i in (*self.global_blocks, *self.taps) if not 0 <= i < self.depth]
        if bad:
            problems.append(f"block indices {bad} in global_blocks/taps are outside 0..{self.depth - 1}")
        if not self.taps:
            problems.append("taps must name at least one block")
        if self.image_size % self.input_multiple:
            problems.append(
                f"image_size {self.image_size} is not a multiple of patch_size * window_size = {self.input_multiple}"
            )
        ratios = {self.patch_size // 4, self.patch_size // 2, self.patch_size, self.patch_size * 2, self.patch_size * 4}
        if not self.strides or any(s not in ratios for s in self.strides) or list(self.strides) != sorted(self.strides):
            problems.append(
                f"strides must be increasing, each patch_size times 1/4, 1/2, 1, 2 or 4 ({sorted(ratios)}), "
                f"not {self.strides}"
            )
        if self.num_classes < 1:
            problems.append(f"num_classes must be at least 1, not {self.num_classes}")
        if problems:
            raise OnedetError("invalid model config: " + "; ".join(problems))

    @property
    def input_multiple(self) -> int:
        """Input height and width must be multiples of this (the detector pads other sizes)."""
        return self.patch_size * self.window_size

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """The preset `name` ("base", "small", "tiny") with `overrides` applied on top."""
        if name not in PRESETS:
            raise OnedetError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
        return cls.from_dict({**PRESETS[name], **overrides})

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (tuples become lists)."""
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of `to_dict`; unknown keys are an error (a checkpoint from another version, or a typo)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise OnedetError(f"unknown model config keys {unknown}; known keys: {', '.join(sorted(known))}")
        return cls(**data)


# A preset is the set of fields that differ from the defaults above (which are the base model).
PRESETS: dict[str, dict[str, Any]] = {
    # CLIP ViT-B/16 (OpenAI weights), windowed attention with 4 global blocks, 192-channel pyramid: ~88M params.
    "base": {},
    # ViT-S/16-sized (ImageNet-21k augreg weights through timm): the CPU workhorse and the distillation target.
    "small": {
        "backbone": "vit_small_patch16_224.augreg_in21k",
        "embed_dim": 384,
        "num_heads": 6,
        "act": "gelu",
        "pre_norm": False,
        "norm_eps": 1e-6,
        "pixel_mean": INCEPTION_MEAN,
        "pixel_std": INCEPTION_STD,
    },
    # A few million parameters, random initialisation: for tests, and cut down further for the CPU quickstart
    # (`onedet.quickstart.QUICKSTART_MODEL`).
    "tiny": {
        "backbone": "vit_tiny_patch16_224",
        "embed_dim": 192,
        "depth": 6,
        "num_heads": 3,
        "act": "gelu",
        "pre_norm": False,
        "norm_eps": 1e-6,
        "pixel_mean": INCEPTION_MEAN,
        "pixel_std": INCEPTION_STD,
        "image_size": 256,
        "window_size": 8,
        "global_blocks": (2, 5),
        "taps": (3, 5),
        "pretrained": None,
        "neck_channels": 96,
    },
}


def from_preset(name: str, **overrides: Any) -> ModelConfig:
    """`ModelConfig.from_preset` as a function (the public `onedet.from_preset`)."""
    return ModelConfig.from_preset(name, **overrides)
