"""onedet: one strong object detector, fast data, easy fine-tuning, one ONNX file from pixels to boxes.

The public API is imported lazily, so that `import onedet.runtime` (onnxruntime, numpy and Pillow only)
never imports torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> module that defines it; resolved on first access (PEP 562).
_LAZY = {
    "prepare": "onedet.data.prepare",
    "Store": "onedet.data.store",
    "BatchLoader": "onedet.data.loader",
    "make_synthetic": "onedet.data.synthetic",
    "ModelConfig": "onedet.config",
    "from_preset": "onedet.config",
    "build_detector": "onedet.model.detector",
    "Detector": "onedet.model.detector",
    "train": "onedet.train",
    "evaluate": "onedet.evaluate",
    "export": "onedet.export",
    "predict": "onedet.predict",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'onedet' has no attribute {name!r}")
