"""onedet: one strong object detector, fast data, easy fine-tuning, one ONNX file from pixels to boxes.

The public API is imported lazily (PEP 562), so that `import onedet` and `import onedet.runtime` (onnxruntime,
numpy and Pillow only) never import torch.

`onedet.train`, `onedet.evaluate`, `onedet.export` and `onedet.predict` are submodules, and always resolve to
the submodule: once a submodule is imported Python binds the package attribute to it, so a same-named function
here would turn into a module depending on import order. Call the facade (`onedet.OneDet(...).train(...)`,
`.predict`, `.evaluate`, `.export`) or import the functions (`from onedet.train import train`,
`from onedet.predict import predict`, `from onedet.export import export`,
`from onedet.evaluate import evaluate_run`).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> module that defines it; resolved on first access.
_LAZY = {
    "OneDet": "onedet.api",
    "prepare": "onedet.data.prepare",
    "Store": "onedet.data.store",
    "BatchLoader": "onedet.data.loader",
    "make_synthetic": "onedet.data.synthetic",
    "ModelConfig": "onedet.config",
    "from_preset": "onedet.config",
    "build_detector": "onedet.model.detector",
    "Detector": "onedet.model.detector",
    "OnnxDetector": "onedet.runtime",
    "Detections": "onedet.runtime",
    "OnedetError": "onedet.errors",
}
# Submodules named like the CLI commands: `onedet.train` is the module whether or not it was imported before.
_SUBMODULES = ("train", "evaluate", "export", "predict")

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'onedet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, *_SUBMODULES})
