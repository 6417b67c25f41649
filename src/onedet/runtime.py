"""Run an exported onedet ONNX file with onnxruntime, numpy and Pillow only (no torch).

The exported graph does everything between uint8 pixels and boxes (letterbox, normalisation, the model,
top-k decoding, boxes back to original pixels, dataset class ids), so this module only checks the inputs,
groups images of the same size into one batch, and wraps the outputs as `Detections`.

Importing this module must never import torch: it is what a serving image installs (see Dockerfile.runtime).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onedet.errors import OnedetError
from onedet.options import PredictOptions

# ONNX metadata keys written by `onedet.export` and read here.
MARKER_KEY = "onedet_model"
"""Present in every file onedet exports; its value is the metadata format version."""
MARKER_VERSION = "1"
VERSION_KEY = "onedet_version"
CLASSES_KEY = "classes"
"""JSON list of class names by contiguous label."""
CATEGORY_IDS_KEY = "category_ids"
"""JSON list of the dataset's own class id by contiguous label (the graph's `labels` output uses these)."""
IMAGE_SIZE_KEY = "image_size"
PRECISION_KEY = "precision"
"""fp32, fp16, int8-dynamic or int8-static."""
SCORE_THRESHOLDS_KEY = "score_thresholds"
"""JSON list, by contiguous label, of each class's own score threshold: the score at which its F1 (IoU 0.5) was best
on the val split when the model was trained; null where there is none (the class was never found there, or the
split has no box of it). Also a `model.json` key of the checkpoint it was measured on."""

DEFAULT_THRESHOLD = 0.3
"""The score threshold of a class the model records no threshold of (and of every class of a model without any)."""

INPUT_NAME = "images"
OUTPUT_NAMES = ("boxes", "scores", "labels")


@dataclass(frozen=True)
class Detections:
    """The detections of one image, in its original pixel coordinates, best first."""

    boxes_xyxy: np.ndarray
    """float32 [n, 4]: x0, y0, x1, y1 in the original image's pixels."""
    scores: np.ndarray
    """float32 [n]: confidence in 0..1."""
    category_ids: np.ndarray
    """int64 [n]: the dataset's own class ids (COCO category ids; for VOC/YOLO the contiguous label)."""
    class_names: list[str] = field(default_factory=list)
    """[n]: the class name of each detection."""
    track_ids: np.ndarray | None = None
    """int64 [n]: each detection's track in a video (`onedet.track.Tracker`); None when not tracked."""

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def to_coco(self, file: str = "") -> list[dict[str, Any]]:
        """COCO-results dicts: `file`, `bbox` [x, y, w, h], `score`, `category_id`, `category`, and `track_id` when
        tracked."""
        rows = []
        for i, (box, score, cid, name) in enumerate(
            zip(self.boxes_xyxy.tolist(), self.scores.tolist(), self.category_ids, self.class_names)
        ):
            x0, y0, x1, y1 = box
            row = {
                "file": file,
                "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                "score": round(float(score), 5),
                "category_id": int(cid),
                "category": name,
            }
            if self.track_ids is not None:
                row["track_id"] = int(self.track_ids[i])
            rows.append(row)
        return rows

    def to_supervision(self) -> Any:
        """These detections as `supervision.Detections` (needs `pip install supervision`)."""
        try:
            import supervision as sv
        except ImportError as e:
            raise OnedetError(
                "to_supervision() needs the supervision package: pip install 'onedet[supervision]'"
            ) from e
        return sv.Detections(
            xyxy=self.boxes_xyxy.astype(np.float32),
            confidence=self.scores.astype(np.float32),
            class_id=self.category_ids.astype(int),
            tracker_id=None if self.track_ids is None else self.track_ids.astype(int),
            data={"class_name": np.array(self.class_names, dtype=str)},
        )


def parse_score_thresholds(value: Any, num_classes: int, source: str | Path) -> list[float | None]:
    """`SCORE_THRESHOLDS_KEY`'s value (already JSON-decoded) checked: one score in 0..1 or None per class."""

    def valid(t: Any) -> bool:
        return t is None or (isinstance(t, (int, float)) and not isinstance(t, bool) and 0.0 <= t <= 1.0)

    if not isinstance(value, list) or len(value) != num_classes or not all(map(valid, value)):
        raise OnedetError(
            f"{source}: '{SCORE_THRESHOLDS_KEY}' must be a list of {num_classes} scores in 0..1 or null, got {value!r}"
        )
    return [None if t is None else float(t) for t in value]


def check_threshold(threshold: float) -> None:
    """Refuse a score threshold outside 0..1: scores are in 0..1, so NaN or 2 would silently return nothing."""
    if not 0.0 <= threshold <= 1.0:
        raise OnedetError(f"threshold must be a score in 0..1, got {threshold}")


def class_thresholds_of(category_ids: np.ndarray, threshold: float | Mapping[int, float]) -> np.ndarray:
    """float32 [n]: the score threshold of each of `category_ids`, from one for every class or one per category id
    (`BatchDetector.class_thresholds`; `DEFAULT_THRESHOLD` for an id it lacks)."""
    if isinstance(threshold, Mapping):
        return np.array([threshold.get(int(c), DEFAULT_THRESHOLD) for c in category_ids], np.float32)
    return np.full(len(category_ids), threshold, np.float32)


def make_detections(
    boxes_xyxy: np.ndarray,
    scores: np.ndarray,
    category_ids: np.ndarray,
    names_by_id: dict[int, str],
    threshold: float | Mapping[int, float],
) -> Detections:
    """Detections of one image from the graph's fixed-size outputs ([K, 4], [K], [K]), keeping score >= threshold
    (one for every class, or one per category id: `BatchDetector.class_thresholds`)."""
    keep = scores >= class_thresholds_of(category_ids, threshold).astype(scores.dtype)
    ids = category_ids[keep].astype(np.int64)
    return Detections(
        boxes_xyxy=boxes_xyxy[keep].astype(np.float32),
        scores=scores[keep].astype(np.float32),
        category_ids=ids,
        class_names=[names_by_id.get(int(i), str(int(i))) for i in ids],
    )


def check_image(image: Any, name: str = "image") -> np.ndarray:
    """A uint8 [H, W, 3] RGB array from a numpy array or a Pillow image, or an OnedetError saying what is wrong."""
    if hasattr(image, "mode") and hasattr(image, "convert"):  # a Pillow image, without importing Pillow eagerly
        image = np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray):
        raise OnedetError(f"{name}: expected a numpy uint8 array [H, W, 3] (RGB), got {type(image).__name__}")
    if image.dtype != np.uint8:
        hint = " (if it is in 0..1, pass (x * 255).round().astype(np.uint8))" if image.dtype.kind == "f" else ""
        raise OnedetError(f"{name}: expected dtype uint8, got {image.dtype}{hint}")
    if image.ndim != 3:
        raise OnedetError(f"{name}: expected 3 dimensions [H, W, 3] (height, width, RGB), got shape {image.shape}")
    if image.shape[2] != 3:
        hint = " (channels first? pass [H, W, 3])" if image.shape[0] == 3 else ""
        raise OnedetError(f"{name}: expected 3 channels (RGB) in the last dimension, got shape {image.shape}{hint}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise OnedetError(f"{name}: empty image of shape {image.shape}")
    return np.ascontiguousarray(image)


def as_image_list(images: Any) -> list[np.ndarray]:
    """One image, a [B, H, W, 3] batch, or a list of images, as a list of checked uint8 [H, W, 3] arrays."""
    if isinstance(images, np.ndarray) and images.ndim == 4:
        images = list(images)
    elif not isinstance(images, (list, tuple)):
        images = [images]
    if not images:
        raise OnedetError("no images given")
    return [check_image(im, f"image {i}") for i, im in enumerate(images)]


def group_by_size(images: Sequence[np.ndarray]) -> list[list[int]]:
    """Indices of images grouped by (H, W): the graph takes one [B, H, W, 3] batch of equal-size images."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, im in enumerate(images):
        groups.setdefault((im.shape[0], im.shape[1]), []).append(i)
    return list(groups.values())


SPINNING_KEY = "session.intra_op.allow_spinning"
"""onnxruntime's session option for whether idle intra-op threads spin ("1", its default) or sleep ("0")."""


class BatchDetector:
    """What the onnxruntime and the PyTorch predictors share: images of any sizes in, one `Detections` each out.

    Subclasses provide `category_ids` and `names_by_id`, `score_thresholds` (the model's own per class, by contiguous
    label, None where it has none; or None) and `run_batch` (a `[B, H, W, 3]` uint8 batch of one size -> boxes,
    scores, labels as numpy arrays); images of the same size are batched together.
    """

    category_ids: list[int]
    names_by_id: dict[int, str]
    score_thresholds: list[float | None] | None = None

    def class_thresholds(self) -> dict[int, float]:
        """The score threshold of each category id when the caller gives none: the model's own (`score_thresholds`),
        `DEFAULT_THRESHOLD` for a class without one."""
        own = self.score_thresholds or [None] * len(self.category_ids)
        return {cid: DEFAULT_THRESHOLD if t is None else t for cid, t in zip(self.category_ids, own)}

    def describe_thresholds(self, threshold: float | None = None) -> str:
        """One line saying which score thresholds `threshold` means for this model (what `onedet predict` prints)."""
        if threshold is not None:
            return f"score threshold {threshold:g} for every class"
        if not self.score_thresholds or all(t is None for t in self.score_thresholds):
            return f"score threshold {DEFAULT_THRESHOLD:g} for every class (the model records none of its own)"
        names = [self.names_by_id[cid] for cid in self.category_ids]
        shown = ", ".join(
            f"{name} {t:.3g}" if t is not None else f"{name} {DEFAULT_THRESHOLD:g} (none of its own)"
            for name, t in zip(names, self.score_thresholds)
        )
        return f"score thresholds per class (each class's best F1 on the val split): {shown}"

    def run_batch(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        raise NotImplementedError

    def __call__(self, images: Any, threshold: float | None = PredictOptions.threshold) -> list[Detections]:
        """Detect objects in one image, a list of images (any sizes) or a [B, H, W, 3] batch (uint8 RGB).

        Returns one `Detections` per image, in input order, keeping detections with score >= threshold; with
        `threshold=None`, each class's own (`class_thresholds`).
        """
        limits: float | dict[int, float]
        if threshold is None:
            limits = self.class_thresholds()
        else:
            check_threshold(threshold)
            limits = threshold
        arrays = as_image_list(images)
        results: list[Detections | None] = [None] * len(arrays)
        for idx in group_by_size(arrays):
            boxes, scores, labels = self.run_batch(np.stack([arrays[i] for i in idx]))
            for j, i in enumerate(idx):
                results[i] = make_detections(boxes[j], scores[j], labels[j], self.names_by_id, limits)
        return [r for r in results if r is not None]


class OnnxDetector(BatchDetector):
    """An exported onedet model: `OnnxDetector("model.onnx")(image) -> [Detections]`.

    `providers` are onnxruntime execution providers (default: CPU); `threads` caps the intra-op threads.
    `spinning=False` makes the intra-op threads sleep as soon as a run ends instead of spinning for more work
    (onnxruntime's `session.intra_op.allow_spinning`): use it when several sessions share the CPU (several models
    in one process, or models timed against each other), where one session's idle spinning threads take cores
    from the session running (BENCHMARKS.md, Inference, "spinning threads"). One model alone runs as fast either
    way.
    """

    def __init__(
        self,
        path: str | Path,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        spinning: bool = True,
    ) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise OnedetError(f"{self.path}: ONNX file not found")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        if not spinning:
            options.add_session_config_entry(SPINNING_KEY, "0")
        try:
            self.session = ort.InferenceSession(
                str(self.path), sess_options=options, providers=list(providers or ["CPUExecutionProvider"])
            )
        except Exception as e:  # onnxruntime raises its own Fail/InvalidProtobuf/... types
            raise OnedetError(f"{self.path}: onnxruntime cannot load this file as an ONNX model ({e})") from e
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get(MARKER_KEY) is None:
            raise OnedetError(
                f"{self.path}: not a onedet model (no '{MARKER_KEY}' metadata); export one with `onedet export`"
            )
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if inputs != [INPUT_NAME] or tuple(outputs) != OUTPUT_NAMES:
            raise OnedetError(f"{self.path}: unexpected inputs {inputs} / outputs {outputs} for a onedet model")
        self.metadata = dict(meta)
        self.classes: list[str] = json.loads(meta[CLASSES_KEY])
        self.category_ids: list[int] = [int(c) for c in json.loads(meta[CATEGORY_IDS_KEY])]
        self.image_size = int(meta[IMAGE_SIZE_KEY])
        self.precision = meta.get(PRECISION_KEY, "fp32")
        self.names_by_id = dict(zip(self.category_ids, self.classes))
        own = meta.get(SCORE_THRESHOLDS_KEY)  # absent from files exported before onedet recorded them
        if own is not None:
            self.score_thresholds = parse_score_thresholds(json.loads(own), len(self.classes), self.path)

    def run_batch(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The raw graph outputs for a uint8 [B, H, W, 3] batch: boxes [B, K, 4], scores [B, K], labels [B, K]."""
        boxes, scores, labels = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: batch})
        return boxes, scores, labels

    def __repr__(self) -> str:
        return f"OnnxDetector({str(self.path)!r}, classes={len(self.classes)}, precision={self.precision})"
