"""ONNX export: one file from uint8 pixels of any size to boxes in the original image's pixels.

What is exported is `onedet.end_to_end.EndToEnd` (letterbox, model, top-k decoding, original pixels, class ids).
Export uses the dynamo exporter (`torch.onnx.export(..., dynamo=True)`): the legacy exporter fails on timm's
position-embedding resize. int8 comes from onnxruntime's quantizers (`onedet.quantize`), fp16 from exporting the
detector in half precision: onnxruntime's float16 converter broke the graph's topological order, and would put
pre/post-processing in fp16 too (boxes of 4000 px need fp32).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import onnx
import onnxscript.optimizer
import torch

from onedet import __version__
from onedet.end_to_end import EndToEnd, build_end_to_end
from onedet.errors import OnedetError
from onedet.runtime import (
    CATEGORY_IDS_KEY,
    CLASSES_KEY,
    IMAGE_SIZE_KEY,
    INPUT_NAME,
    MARKER_KEY,
    MARKER_VERSION,
    OUTPUT_NAMES,
    PRECISION_KEY,
    SCORE_THRESHOLDS_KEY,
    VERSION_KEY,
    OnnxDetector,
)

log = logging.getLogger(__name__)

DEFAULT_OPSET = 18
"""The newest opset onnxruntime and TensorRT 10 both support well (the graph itself needs no opset-18 operator)."""
FOLD_LIMIT = 1 << 24
"""Elements up to which export constant-folds a computed weight (64 MB in float32)."""
# Known to give wrong results or fail under TensorRT 10 (Resize: its antialias mode is not implemented, and the
# letterbox uses `resize_banded` instead; the model itself has no resize).
_FORBIDDEN_OPS = {"GridSample", "Resize"}


def _metadata(
    classes: list[str],
    category_ids: list[int],
    image_size: int,
    precision: str,
    score_thresholds: list[float | None] | None = None,
) -> dict[str, str]:
    meta = {
        MARKER_KEY: MARKER_VERSION,
        VERSION_KEY: __version__,
        CLASSES_KEY: json.dumps(classes),
        CATEGORY_IDS_KEY: json.dumps(category_ids),
        IMAGE_SIZE_KEY: str(image_size),
        PRECISION_KEY: precision,
    }
    if score_thresholds is not None:  # the run's own, so that the file alone predicts as the run does
        meta[SCORE_THRESHOLDS_KEY] = json.dumps(score_thresholds)
    return meta


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
    assert program is not None  # dynamo=True always returns an ONNXProgram
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


def rewrite_metadata(path: Path, metadata: dict[str, str]) -> None:
    """Replace metadata entries of the ONNX file at `path` in place, and check the graph again."""
    proto = onnx.load(str(path))
    set_metadata(proto, metadata)
    onnx.save(proto, str(path))
    check_graph(path)


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
        from onedet.checkpoint import load_run

        weights = load_run(Path(weights))
    from onedet.quantize import quantize_int8_dynamic, quantize_int8_static  # imports this module

    module, classes, category_ids = build_end_to_end(weights, classes, category_ids, max_detections=max_detections)
    own = getattr(weights, "score_thresholds", None)  # a LoadedRun's, checked by load_run (a bare Detector has none)
    meta = _metadata(classes, category_ids, module.image_size, "fp32", own)
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


CHECK_TOLERANCE = 0.01
"""`check_exports` flags a variant whose AP is more than this share below the fp32 file's."""


CHECK_ROUNDS = 5
"""`check_exports` times each file this many round-robin rounds (after one warm-up call) and keeps the median."""


def time_files(paths: Sequence[Path], image: Any, rounds: int = CHECK_ROUNDS) -> list[float]:
    """Median milliseconds of one call of each file on `image` (uint8 `[H, W, 3]`, batch 1) through onnxruntime's
    CPU provider with its default threads, timed round-robin (`onedet.timing`; spinning off, as several sessions
    share the process). The figure of the machine that runs this, not of the one a file is deployed on."""
    from functools import partial

    from onedet.timing import time_round_robin

    detectors = {str(path): OnnxDetector(path, spinning=False) for path in paths}
    seconds = time_round_robin({name: partial(d, image) for name, d in detectors.items()}, rounds)
    return [seconds[str(path)] * 1000 for path in paths]


def check_exports(
    paths: Sequence[Path], data: str | Path, batch_size: int = 8, progress: bool = False
) -> list[dict[str, Any]]:
    """Evaluate every exported file on a store split (`onedet eval --weights FILE`, through onnxruntime) and time
    it (`time_files` on the split's first image): one row per file, `{"file", "AP", "AP50", "vs_fp32", "MB", "ms",
    "ms_vs_fp32"}`, the ratios to the first (fp32) file's (`vs_fp32` None when its AP is 0). The split's classes
    must be the model's."""
    from onedet.data.store import Store
    from onedet.evaluate import evaluate_run

    store = Store(data)
    metrics = [evaluate_run(path, store, batch_size=batch_size, progress=progress) for path in paths]
    image = store.read_batch([0])["images"][0].numpy().transpose(1, 2, 0) if len(store) else None
    ms = time_files(paths, image) if image is not None else [float("nan")] * len(paths)
    reference = float(metrics[0]["AP"]) if metrics else 0.0
    return [
        {
            "file": Path(path),
            "AP": float(m["AP"]),
            "AP50": float(m["AP50"]),
            "vs_fp32": float(m["AP"]) / reference if reference > 0 else None,
            "MB": Path(path).stat().st_size / 1e6,
            "ms": t,
            "ms_vs_fp32": t / ms[0],
        }
        for path, m, t in zip(paths, metrics, ms)
    ]


def format_check(rows: Sequence[dict[str, Any]], data: str | Path) -> str:
    """`check_exports`' rows as a table, and a warning line for each variant below `CHECK_TOLERANCE`."""
    lines = [
        f"the files on {data} (onnxruntime, CPU; ms: batch 1, median of {CHECK_ROUNDS}, on this machine):",
        "| file | AP | AP50 | AP / fp32 | MB | ms | ms / fp32 |",
        "| --- | --: | --: | --: | --: | --: | --: |",
    ]
    for row in rows:
        ratio = "-" if row["vs_fp32"] is None else f"{row['vs_fp32']:.3f}"
        lines.append(
            f"| {row['file'].name} | {row['AP']:.4f} | {row['AP50']:.4f} | {ratio} | {row['MB']:.1f} "
            f"| {row['ms']:.0f} | {row['ms_vs_fp32']:.2f} |"
        )
    for row in rows[1:]:
        if row["vs_fp32"] is not None and row["vs_fp32"] < 1 - CHECK_TOLERANCE:
            lines.append(
                f"warning: {row['file'].name} keeps {row['vs_fp32']:.3f} of the fp32 file's AP on {data} (more than "
                f"{CHECK_TOLERANCE:.0%} lost): ship the fp32 file, or try static int8 (--calibration STORE/train)"
            )
    return "\n".join(lines)
