"""`EndToEnd`: a `Detector` from uint8 pixels of any size to boxes in the original image's pixels.

It wraps the model with everything a deployment would otherwise re-implement (and get subtly wrong): the store's
letterbox (`letterbox_float`: `letterbox_torch`, which prepare uses, without its rounding), the cast to [0, 1]
(the model owns normalisation), NMS-free top-k decoding, boxes mapped back to original pixels, and the dataset's
own class ids. `onedet.export` exports this module and PyTorch predict runs it eagerly, so the two paths share
code and can be compared. Importing it needs neither onnx nor the training package.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from timm.layers.helpers import is_exporting
from torch import Tensor, nn

from onedet.data.letterbox import letterbox_float, resize_antialias, resize_banded
from onedet.errors import OnedetError
from onedet.model.postprocess import decode_topk, to_original

DEFAULT_MAX_DETECTIONS = 100


class EndToEnd(nn.Module):
    """uint8 `[B, H, W, 3]` RGB images -> `boxes [B, K, 4]` (original pixels, xyxy), `scores [B, K]`, `labels [B, K]`.

    `labels` are the dataset's own class ids (`category_ids[label]`). With `half`, the detector runs in fp16 while
    letterbox and decoding stay in fp32 (coordinates up to thousands of pixels need fp32).
    """

    category_ids: Tensor  # a buffer (registered in __init__)

    def __init__(
        self,
        model: nn.Module,
        image_size: int,
        category_ids: Sequence[int],
        max_detections: int = DEFAULT_MAX_DETECTIONS,
        half: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.image_size = int(image_size)
        self.max_detections = int(max_detections)
        self.fp16 = half
        self.register_buffer("category_ids", torch.as_tensor(list(category_ids), dtype=torch.int64), persistent=False)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, h, w, _ = images.shape
        size = self.image_size
        # The store's letterbox unrounded (rounding would turn the kernels' ~1e-4 grey-level differences into whole
        # levels at a few pixels); in the exported graph its resize is banded MatMuls (TensorRT-safe).
        resize = resize_banded if is_exporting() else resize_antialias
        x = letterbox_float(images.permute(0, 3, 1, 2), size, resize) / 255.0  # (B, 3, S, S)
        if self.fp16:
            x = x.half()
        out = self.model(x)
        boxes, scores, labels = decode_topk(out.logits.float(), out.boxes_xyxy.float(), self.max_detections)
        # The scale of every image in the batch (they share H and W), as a tensor computed from the symbolic size.
        scale = torch.full((b,), size / torch.sym_max(h, w), dtype=torch.float32, device=boxes.device)
        orig_size = torch.cat(
            [torch.full((b, 1), h, device=boxes.device), torch.full((b, 1), w, device=boxes.device)], dim=1
        )
        boxes = to_original(boxes, scale, orig_size)
        return boxes, scores, self.category_ids[labels]


def _resolve(
    weights: Any, classes: Sequence[str] | None, category_ids: Sequence[int] | None
) -> tuple[nn.Module, Any, list[str], list[int]]:
    """(model in eval mode, config or None, classes, category_ids) from a run folder, a LoadedRun or a Detector."""
    if isinstance(weights, (str, Path)):
        from onedet.checkpoint import load_run

        weights = load_run(Path(weights))
    if hasattr(weights, "model") and hasattr(weights, "classes"):  # a LoadedRun
        return weights.model.eval(), weights.config, list(weights.classes), [int(c) for c in weights.category_ids]
    if not isinstance(weights, nn.Module):
        raise OnedetError(f"export: expected a run folder, a LoadedRun or a Detector, got {type(weights).__name__}")
    config = getattr(weights, "cfg", None) or getattr(weights, "config", None)
    num_classes = getattr(config, "num_classes", None)
    if classes is None:
        if num_classes is None:
            raise OnedetError("export: pass classes= when exporting a bare Detector without a config")
        classes = [str(i) for i in range(num_classes)]
    if category_ids is None:
        category_ids = list(range(len(classes)))
    # A copy: the caller's model (maybe mid-training) keeps its mode, gradients and adapters.
    return _merged(copy.deepcopy(weights)).eval(), config, list(classes), [int(c) for c in category_ids]


def _merged(model: nn.Module) -> nn.Module:
    """`model` with its LoRA adapters merged into the linears (in place), if it has any.

    Runs loaded by `load_run` are merged already; this covers a Detector fresh from LoRA training.
    """
    if not any(type(m).__module__.startswith("peft.") for m in model.modules()):
        return model
    from onedet.model.lora import merge_lora

    return merge_lora(model)


def build_end_to_end(
    weights: Any,
    classes: Sequence[str] | None = None,
    category_ids: Sequence[int] | None = None,
    image_size: int | None = None,
    max_detections: int | None = None,
    half: bool = False,
) -> tuple[EndToEnd, list[str], list[int]]:
    """The `EndToEnd` module of a run folder, a LoadedRun or a Detector, with its class names and ids."""
    model, config, classes, category_ids = _resolve(weights, classes, category_ids)
    if len(classes) != len(category_ids):
        raise OnedetError(f"export: {len(classes)} class names but {len(category_ids)} category ids")
    size = image_size or getattr(config, "image_size", None)
    if size is None:
        raise OnedetError("export: the image size is unknown; pass image_size=")
    k = max_detections or getattr(config, "topk", None) or DEFAULT_MAX_DETECTIONS
    if half:
        model = copy.deepcopy(model).half()  # the caller's model stays fp32
    module = EndToEnd(model, int(size), category_ids, max_detections=int(k), half=half).eval()
    return module, classes, category_ids
