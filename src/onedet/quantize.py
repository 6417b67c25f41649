"""int8 variants of an exported ONNX file, through onnxruntime's quantizers (dynamic, or static calibrated on a store
split). The letterbox's MatMuls and the top-k stay float (`preprocessing_nodes`): pixels are never quantised.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from onedet.errors import OnedetError
from onedet.export import rewrite_metadata
from onedet.runtime import INPUT_NAME, PRECISION_KEY

# Ops whose int8 versions pay off on CPU.
_INT8_DYNAMIC_OPS = ["MatMul", "Gemm"]
_INT8_STATIC_OPS = ["MatMul", "Gemm", "Conv"]


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
    rewrite_metadata(out, {**metadata, PRECISION_KEY: "int8-dynamic"})
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
    rewrite_metadata(out, {**metadata, PRECISION_KEY: "int8-static"})
    return out
