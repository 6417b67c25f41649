"""ONNX export: one file from uint8 pixels of any size to boxes in the original image's pixels.

`EndToEnd` wraps a `Detector` with everything a deployment would otherwise re-implement (and get subtly wrong):
the store's letterbox (`letterbox_float`: `letterbox_torch`, which prepare uses, without its rounding), the
cast to [0, 1] (the model owns normalisation), NMS-free top-k decoding, boxes mapped back to original pixels,
and the dataset's own class ids. PyTorch predict runs this same module eagerly, so the two paths share code and
can be compared.

Export uses the dynamo exporter (`torch.onnx.export(..., dynamo=True)`): the legacy exporter fails on timm's
position-embedding resize (../shared/ANCHORS.md). int8 comes from onnxruntime's quantizer (dynamic, or static
calibrated on a store split), fp16 from exporting the detector in half precision: onnxruntime's float16
converter broke the graph's topological order here, and would put pre/post-processing in fp16 too (boxes of
4000 px need fp32).
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxscript.optimizer
import torch
from timm.layers.helpers import is_exporting
from torch import Tensor, nn

from onedet import __version__
from onedet.data.letterbox import letterbox_float, resize_antialias, resize_separable
from onedet.errors import OnedetError
from onedet.postprocess import decode_topk, to_original
from onedet.runtime import (
    CATEGORY_IDS_KEY,
    CLASSES_KEY,
    IMAGE_SIZE_KEY,
    INPUT_NAME,
    MARKER_KEY,
    MARKER_VERSION,
    OUTPUT_NAMES,
    PRECISION_KEY,
    VERSION_KEY,
)

log = logging.getLogger(__name__)

DEFAULT_OPSET = 18
"""The newest opset onnxruntime and TensorRT 10 both support well (the graph itself needs no opset-18 operator)."""
FOLD_LIMIT = 1 << 24
"""Elements up to which export constant-folds a computed weight (64 MB in float32)."""
DEFAULT_MAX_DETECTIONS = 100
# Ops whose int8 versions pay off on CPU. The letterbox MatMuls stay float (`preprocessing_nodes`), as does the top-k.
_INT8_DYNAMIC_OPS = ["MatMul", "Gemm"]
_INT8_STATIC_OPS = ["MatMul", "Gemm", "Conv"]
# Known to give wrong results or fail under TensorRT 10 (Resize: its antialias mode is not implemented, and the
# letterbox uses `resize_separable` instead; the model itself has no resize).
_FORBIDDEN_OPS = {"GridSample", "Resize"}


class EndToEnd(nn.Module):
    """uint8 `[B, H, W, 3]` RGB images -> `boxes [B, K, 4]` (original pixels, xyxy), `scores [B, K]`, `labels [B, K]`.

    `labels` are the dataset's own class ids (`category_ids[label]`). With `half`, the detector runs in fp16 while
    letterbox and decoding stay in fp32 (coordinates up to thousands of pixels need fp32).
    """

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
        # levels at a few pixels); in the exported graph its resize is plain MatMuls (TensorRT-safe).
        resize = resize_separable if is_exporting() else resize_antialias
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
        from onedet.train.checkpoint import load_run

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
    from onedet.lora import merge_lora

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


def _metadata(classes: list[str], category_ids: list[int], image_size: int, precision: str) -> dict[str, str]:
    return {
        MARKER_KEY: MARKER_VERSION,
        VERSION_KEY: __version__,
        CLASSES_KEY: json.dumps(classes),
        CATEGORY_IDS_KEY: json.dumps(category_ids),
        IMAGE_SIZE_KEY: str(image_size),
        PRECISION_KEY: precision,
    }


def set_metadata(proto: onnx.ModelProto, metadata: dict[str, str]) -> None:
    """Replace the model's metadata_props entries named in `metadata` (others are kept)."""
    kept = [p for p in proto.metadata_props if p.key not in metadata]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)


def check_graph(path: Path) -> None:
    """onnx.checker on the file, and no operator known to break TensorRT."""
    onnx.checker.check_model(str(path))
    proto = onnx.load(str(path), load_external_data=False)
    bad = sorted({n.op_type for n in _all_nodes(proto.graph)} & _FORBIDDEN_OPS)
    if bad:
        raise OnedetError(f"{path}: the exported graph contains {bad}, which TensorRT does not run reliably")


def _all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node, including those inside If/Loop sub-graphs."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attr.g)
            for g in attr.graphs:
                yield from _all_nodes(g)


def export_onnx(module: EndToEnd, out: Path, metadata: dict[str, str], opset: int = DEFAULT_OPSET) -> Path:
    """Export `module` with dynamic batch, height and width; write `out` with `metadata`; check it."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    dtype = next(module.model.parameters()).dtype
    device = next(module.model.parameters()).device
    # Batch 2 and a non-square size, so the exporter does not specialise any axis to 1 or to H == W.
    example = torch.randint(0, 256, (2, 48, 64, 3), dtype=torch.uint8, device=device)
    dims = {
        0: torch.export.Dim("batch", min=1, max=1024),
        1: torch.export.Dim("height", min=1, max=65535),
        2: torch.export.Dim("width", min=1, max=65535),
    }
    log.info("exporting %s (%s) to %s", type(module.model).__name__, dtype, out)
    with torch.no_grad():
        program = torch.onnx.export(
            module,
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes={"images": dims},
            opset_version=opset,
            optimize=True,
            verbose=False,
        )
    # The exporter folds constants only up to 262144 elements; the neck computes its fuse conv's weight and bias
    # from parameters (the tap norms folded in, onedet/model/neck.py), larger than that at base. Folded here
    # they become initializers, which the int8 quantizers need to quantize that conv.
    onnxscript.optimizer.fold_constants(program.model, input_size_limit=FOLD_LIMIT, output_size_limit=FOLD_LIMIT)
    onnxscript.optimizer.remove_unused_nodes(program.model)
    proto = program.model_proto
    set_metadata(proto, metadata)
    onnx.save(proto, str(out))
    check_graph(out)
    return out


def _rewrite_metadata(path: Path, metadata: dict[str, str]) -> None:
    proto = onnx.load(str(path))
    set_metadata(proto, metadata)
    onnx.save(proto, str(path))
    check_graph(path)


def preprocessing_nodes(proto: onnx.ModelProto) -> list[str]:
    """Names of the nodes that compute the model's input: every ancestor of the first Conv (the patch embedding).

    The quantizers must leave these in float: the letterbox's MatMuls work on pixel values, and int8 there would
    cost whole grey levels (and nothing in speed).
    """
    nodes = list(proto.graph.node)
    first_conv = next((n for n in nodes if n.op_type == "Conv"), None)
    if first_conv is None:
        return []
    producer = {out: n for n in nodes for out in n.output}
    seen: dict[str, onnx.NodeProto] = {}
    stack = list(first_conv.input)
    while stack:
        node = producer.get(stack.pop())
        if node is not None and node.name not in seen:
            seen[node.name] = node
            stack.extend(node.input)
    return sorted(seen)


def quantize_int8_dynamic(fp32: Path, out: Path, metadata: dict[str, str]) -> Path:
    """int8 weights, activations quantized on the fly (onnxruntime `quantize_dynamic`); no calibration data."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        fp32,
        out,
        op_types_to_quantize=_INT8_DYNAMIC_OPS,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=preprocessing_nodes(onnx.load(str(fp32), load_external_data=False)),
    )
    _rewrite_metadata(out, {**metadata, PRECISION_KEY: "int8-dynamic"})
    return out


class _StoreCalibration:
    """onnxruntime CalibrationDataReader over a store split: its letterboxed images, one at a time, as [1, S, S, 3]."""

    def __init__(self, split: Path, num_images: int) -> None:
        from onedet.data.store import Store

        self.store = Store(split)
        n = min(num_images, len(self.store))
        if n == 0:
            raise OnedetError(f"{split}: the calibration split holds no images")
        # Spread over the split rather than its first files (which are often one scene or one class).
        self.indices = np.linspace(0, len(self.store) - 1, n).round().astype(int).tolist()
        self.position = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= len(self.indices):
            return None
        image = self.store.read_image(self.indices[self.position])  # uint8 (3, S, S), letterboxed already
        self.position += 1
        return {INPUT_NAME: np.ascontiguousarray(image.permute(1, 2, 0).numpy()[None])}

    def rewind(self) -> None:
        self.position = 0


def quantize_int8_static(
    fp32: Path, out: Path, metadata: dict[str, str], calibration: Path, num_images: int = 16
) -> Path:
    """int8 weights and activations (QDQ), activation ranges calibrated (min/max) on a store split's images."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    reader = _StoreCalibration(Path(calibration), num_images)

    class Reader(CalibrationDataReader):  # onnxruntime checks the base class
        def get_next(self) -> dict[str, np.ndarray] | None:
            return reader.get_next()

        def rewind(self) -> None:
            reader.rewind()

    quantize_static(
        fp32,
        out,
        Reader(),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=_INT8_STATIC_OPS,
        nodes_to_exclude=preprocessing_nodes(onnx.load(str(fp32), load_external_data=False)),
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        # No CalibMaxIntermediateOutputs: onnxruntime 1.32 drops (not merges) the collected ranges when it is hit.
        # MinMax keeps only per-tensor ReduceMin/ReduceMax outputs per image, so memory stays small without it.
    )
    _rewrite_metadata(out, {**metadata, PRECISION_KEY: "int8-static"})
    return out


def export(
    weights: Any,
    out: str | Path,
    int8: bool = False,
    half: bool = False,
    calibration: str | Path | None = None,
    opset: int = DEFAULT_OPSET,
    classes: Sequence[str] | None = None,
    category_ids: Sequence[int] | None = None,
    max_detections: int | None = None,
) -> list[Path]:
    """Export a run folder (or a LoadedRun, or a Detector with `classes=`) to `out` (fp32) and its variants.

    `int8` also writes `<stem>.int8-dynamic.onnx`, or, with `calibration` (a store split such as STORE/val),
    `<stem>.int8-static.onnx`; `half` also writes `<stem>.fp16.onnx`. Returns the files written.
    """
    out = Path(out)
    if out.suffix != ".onnx":
        raise OnedetError(f"{out}: the output file name must end in .onnx")
    if calibration is not None and not int8:
        raise OnedetError("--calibration is for static int8: add --int8")
    if blocker := next((p for p in out.parents if p.exists() and not p.is_dir()), None):  # before the model loads
        raise OnedetError(f"{blocker}: exists and is not a folder, so {out} cannot be written")
    if out.is_dir():
        raise OnedetError(f"{out}: is a folder; pass the name of the .onnx file to write")
    if isinstance(weights, (str, Path)):
        from onedet.train.checkpoint import load_run

        weights = load_run(Path(weights))
    module, classes, category_ids = build_end_to_end(weights, classes, category_ids, max_detections=max_detections)
    meta = _metadata(classes, category_ids, module.image_size, "fp32")
    paths = [export_onnx(module, out, meta, opset)]
    if int8:
        if calibration is None:
            paths.append(quantize_int8_dynamic(out, out.with_suffix(".int8-dynamic.onnx"), meta))
        else:
            paths.append(quantize_int8_static(out, out.with_suffix(".int8-static.onnx"), meta, Path(calibration)))
    if half:
        half_module, _, _ = build_end_to_end(weights, classes, category_ids, max_detections=max_detections, half=True)
        paths.append(export_onnx(half_module, out.with_suffix(".fp16.onnx"), {**meta, PRECISION_KEY: "fp16"}, opset))
    return paths
