"""Mixed precision choices: bf16 autocast on CUDA, and on CPUs with native bf16 when the backbone is frozen.

On CPUs with native bf16 (AVX512-BF16 / AMX) bf16 autocast runs the backbone, and the neck and head's forward +
backward, markedly faster with features close to fp32's, and training the neck and head of a frozen backbone in
bf16 reached the same val AP as fp32 (BENCHMARKS.md, Training, with the figures). A trainable backbone (LoRA,
full) stays fp32 on the CPU with `auto`: from random weights bf16 trained the quickstart model to a slightly lower
AP per epoch, and torch's bf16 attention backward is slower there than fp32's, so the whole step gains little.
`--amp bf16` asks for it anyway (the quickstart did until session 10, when its smaller model fitted its epochs
in fp32). Weights, optimizer state, the loss and the box decoding stay fp32 in every case (autocast).
"""

from __future__ import annotations

import contextlib
import functools
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from onedet.model.detector import Detector


@functools.cache
def cpu_bf16_supported() -> bool:
    """True when oneDNN has native bf16 kernels on this CPU (else bf16 would be emulated, and slower)."""
    try:
        if not torch.backends.mkldnn.is_available() or not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
        a = torch.randn(16, 16).bfloat16()
        return bool(torch.isfinite((a @ a).float()).all())
    except (RuntimeError, AttributeError):
        return False


def plan(amp: str, device: torch.device, backbone_frozen: bool) -> torch.dtype | None:
    """The autocast dtype of the whole forward for `amp` = auto | bf16 | off (None: fp32)."""
    if amp == "off":
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if amp == "bf16":
        return torch.bfloat16
    # auto on the CPU: bf16 with a frozen backbone, when the CPU has native bf16; else fp32.
    return torch.bfloat16 if backbone_frozen and cpu_bf16_supported() else None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """`torch.autocast` for `dtype`, or a no-op context for None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class AmpForward(nn.Module):
    """The detector's forward under autocast `dtype`, from images or (`cached`) from the features `[B, T*C, h, w]`
    of `Detector.forward_features`. DDP wraps this module, so that its forward is the training step's."""

    def __init__(self, detector: Detector, dtype: torch.dtype | None, device: torch.device, cached: bool = False):
        super().__init__()
        self.detector, self.dtype, self.device, self.cached = detector, dtype, device, cached
        self.config = detector.config

    def forward(self, x: Tensor) -> Any:
        with autocast(self.device, self.dtype):
            if not self.cached:
                # A frozen backbone records nothing for autograd (its features are constants to the neck).
                trains = any(p.requires_grad for p in self.detector.backbone.parameters())
                with torch.set_grad_enabled(trains and torch.is_grad_enabled()):
                    x = self.detector.forward_features(x)  # float32 (a LayerNorm's output)
            return self.detector.forward_head(x)
