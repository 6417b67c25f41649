"""Test helpers shared by the export and predict tests: a run folder with a tiny random detector, and images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from onedet.config import ModelConfig
from onedet.model.detector import build_detector
from onedet.train.saving import write_checkpoint


def make_run(
    folder: Path,
    classes: list[str],
    category_ids: list[int],
    *,
    seed: int = 0,
    cls_std: float = 0.03,
    cls_bias: float = -2.0,
) -> Path:
    """A run folder as training writes it (`weights/best`, through the trainer's own checkpoint writer).

    The detector is the tiny preset cut to 2 blocks (one windowed, one global) at 128 px: every part of the model,
    exported fast. A fresh head predicts the focal prior (~0.01) everywhere, so hundreds of scores would tie within
    1e-6 and their order would be arbitrary; a wider random classifier (`cls_std`, `cls_bias`) spreads the scores
    so that comparing detections means something.
    """
    torch.manual_seed(seed)
    cfg = ModelConfig.from_preset(
        "tiny", num_classes=len(classes), depth=2, global_blocks=(1,), taps=(0, 1), image_size=128, pretrained=None
    )
    model = build_detector(cfg)
    with torch.no_grad():
        model.head.cls_pred.weight.normal_(0.0, cls_std)
        model.head.cls_pred.bias.fill_(cls_bias)
    info = {"model": cfg.to_dict(), "classes": classes, "category_ids": category_ids}
    write_checkpoint(folder / "weights" / "best", weights=model.state_dict(), info=info)
    return folder


def gradient_image(h: int, w: int, seed: int = 0, num_rects: int = 4) -> np.ndarray:
    """A photo-like uint8 [h, w, 3] image: a smooth gradient with a few flat rectangles (structure at every scale,
    unlike pure noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([255 * xx / max(w, 1), 255 * yy / max(h, 1), np.full_like(xx, 128)], axis=-1)
    for _ in range(num_rects):
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        img[y0 : y0 + max(1, h // 4), x0 : x0 + max(1, w // 4)] = rng.integers(0, 256, 3)
    return img.astype(np.uint8)
