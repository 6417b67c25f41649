"""Mixed precision choices: bf16 autocast on CUDA, and on CPUs with native bf16 when the backbone is frozen.

On this kind of CPU (AVX512-BF16 / AMX) bf16 autocast runs the ViT-B/16 backbone at 640 px about 1.8 times
faster with features within about 1% of fp32 (ANCHORS.md), and the neck and head's forward + backward about 2
times faster; training the neck and head of a frozen backbone in bf16 reached the same val AP as fp32
(BENCHMARKS.md, Training). A trainable backbone (LoRA, full) stays fp32 on the CPU with `auto`: from random
weights bf16 trained the quickstart model to a slightly lower AP per epoch, and torch's bf16 attention backward
is slower there than fp32's, so the whole step gains only 1.3x. `--amp bf16` asks for it anyway; the quickstart
does, because in its fixed time budget the extra epochs outweigh that. Weights, optimizer state, the loss and
the box decoding stay fp32 in every case (autocast).
"""

from __future__ import annotations

import contextlib
import functools
from typing import NamedTuple

import torch


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


class AmpPlan(NamedTuple):
    backbone: torch.dtype | None
    """Autocast dtype for the backbone forward (None: fp32)."""
    rest: torch.dtype | None
    """Autocast dtype for the neck, head (and a trainable backbone)."""


def plan(amp: str, device: torch.device, backbone_frozen: bool) -> AmpPlan:
    """Which parts run under bf16 autocast for `amp` = auto | bf16 | off."""
    if amp == "off":
        return AmpPlan(None, None)
    if device.type == "cuda":
        return AmpPlan(torch.bfloat16, torch.bfloat16) if torch.cuda.is_bf16_supported() else AmpPlan(None, None)
    if amp == "bf16":
        return AmpPlan(torch.bfloat16, torch.bfloat16)
    # auto on the CPU: bf16 with a frozen backbone, when the CPU has native bf16; else fp32.
    if backbone_frozen and cpu_bf16_supported():
        return AmpPlan(torch.bfloat16, torch.bfloat16)
    return AmpPlan(None, None)


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """`torch.autocast` for `dtype`, or a no-op context for None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
