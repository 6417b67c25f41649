"""COCO box metrics through faster-coco-eval, on detections mapped back to original image pixels.

Ground truth and detections are handed to faster-coco-eval as in-memory COCO objects (no JSON files).
Crowd regions become `iscrowd=1` annotations of their own class, which COCO's matching treats as ignore
regions for that class: a detection of that class on a crowd is neither a true nor a false positive, while a
detection of another class there is judged as anywhere else. A crowd region of unknown class (label -1, e.g.
from a store written before the store kept crowd labels) becomes one such annotation per class.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from onedet.options import EvalOptions
from onedet.progress import progress_bar
from onedet.runtime import DEFAULT_THRESHOLD, SCORE_THRESHOLDS_KEY

# COCO's summary order (maxDets 100; area all/small/medium/large).
_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")

CONFUSION_IOU = 0.5
"""The IoU from which a detection and an object match in `confusion_matrix` (as AP50 and the `pr` curves)."""


def build_coco_dicts(
    gt: Sequence[dict[str, np.ndarray]],
    detections: Sequence[dict[str, np.ndarray]],
    category_ids: Sequence[int],
    image_ids: Sequence[int] | None = None,
    orig_sizes: Sequence[tuple[int, int]] | np.ndarray | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The COCO ground-truth dataset dict and the detection result list (`loadRes` form) of per-image arrays.

    gt[i]: `boxes_xyxy [M, 4]` (original pixels), `labels [M]` (contiguous), optional `crowd_boxes_xyxy [Mc, 4]`
    and `crowd_labels [Mc]` (contiguous; -1 for unknown). COCO ignores a crowd region only for its own class;
    a region of unknown class (-1, or no `crowd_labels` at all) is an ignore region for every class.
    detections[i]: `boxes_xyxy [K, 4]`, `scores [K]`, `labels [K]`.
    """
    if len(detections) != len(gt):
        raise ValueError(f"{len(detections)} detection entries for {len(gt)} images")
    image_ids = list(range(len(gt))) if image_ids is None else [int(i) for i in image_ids]
    dataset = {
        "images": _coco_images(image_ids, orig_sizes),
        "annotations": _coco_annotations(gt, image_ids, category_ids),
        "categories": [{"id": int(c), "name": str(c)} for c in category_ids],
    }
    return dataset, _coco_results(detections, image_ids, category_ids)


def _xywh(box: np.ndarray) -> list[float]:
    """COCO's `[x, y, w, h]` of an xyxy box."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return [x0, y0, x1 - x0, y1 - y0]


def _coco_images(image_ids: list[int], orig_sizes: Sequence[tuple[int, int]] | np.ndarray | None) -> list[dict]:
    images = []
    for i, image_id in enumerate(image_ids):
        entry: dict[str, Any] = {"id": image_id}
        if orig_sizes is not None:
            entry["height"], entry["width"] = int(orig_sizes[i][0]), int(orig_sizes[i][1])
        images.append(entry)
    return images


def _coco_annotations(
    gt: Sequence[dict[str, np.ndarray]], image_ids: list[int], category_ids: Sequence[int]
) -> list[dict[str, Any]]:
    """Boxes as `iscrowd=0` annotations; each crowd region as `iscrowd=1` of its class (of every class when -1)."""
    annotations: list[dict[str, Any]] = []

    def add(image_id: int, box: np.ndarray, category: int, crowd: int) -> None:
        bbox = _xywh(box)
        # Annotation ids start at 1: COCOeval uses 0 to mean "unmatched".
        annotations.append(
            {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": category,
                "bbox": bbox,
                "area": bbox[2] * bbox[3],
                "iscrowd": crowd,
            }
        )

    for image_id, g in zip(image_ids, gt):
        for box, label in zip(np.asarray(g["boxes_xyxy"]).reshape(-1, 4), np.asarray(g["labels"]).reshape(-1)):
            add(image_id, box, int(category_ids[int(label)]), 0)
        crowd = np.asarray(g.get("crowd_boxes_xyxy", np.zeros((0, 4)))).reshape(-1, 4)
        crowd_labels = np.asarray(g.get("crowd_labels", np.full(len(crowd), -1))).reshape(-1)
        if len(crowd_labels) != len(crowd):
            raise ValueError(f"image {image_id}: {len(crowd)} crowd boxes but {len(crowd_labels)} crowd labels")
        for box, label in zip(crowd, crowd_labels):
            for c in category_ids if label < 0 else [category_ids[int(label)]]:
                add(image_id, box, int(c), 1)
    return annotations


def _coco_results(
    detections: Sequence[dict[str, np.ndarray]], image_ids: list[int], category_ids: Sequence[int]
) -> list[dict[str, Any]]:
    """Detections in `loadRes` form, labels mapped to the dataset's category ids."""
    results: list[dict[str, Any]] = []
    for image_id, d in zip(image_ids, detections):
        boxes = np.asarray(d["boxes_xyxy"], dtype=np.float64).reshape(-1, 4)
        for box, score, label in zip(boxes, np.asarray(d["scores"]).reshape(-1), np.asarray(d["labels"]).reshape(-1)):
            results.append(
                {
                    "image_id": image_id,
                    "category_id": int(category_ids[int(label)]),
                    "bbox": _xywh(box),
                    "score": float(score),
                }
            )
    return results


def _results_as_annotations(dataset: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, Any]:
    """What `COCO.loadRes` builds from box results, built directly so that no detections at all still works."""
    annotations = []
    for i, r in enumerate(results):
        w, h = r["bbox"][2], r["bbox"][3]
        annotations.append({**r, "id": i + 1, "area": w * h, "iscrowd": 0})
    return {"images": dataset["images"], "categories": dataset["categories"], "annotations": annotations}


def coco_metrics(
    gt: Sequence[dict[str, np.ndarray]],
    detections: Sequence[dict[str, np.ndarray]],
    classes: Sequence[str],
    category_ids: Sequence[int] | None = None,
    image_ids: Sequence[int] | None = None,
    orig_sizes: Sequence[tuple[int, int]] | np.ndarray | None = None,
    with_pr: bool = False,
) -> dict[str, Any]:
    """COCO box metrics: `AP, AP50, AP75, APs, APm, APl` (fractions 0..1; -1 where COCO has nothing to
    measure, e.g. no small boxes) and `per_class {name: AP}` (-1 for a class without ground truth).

    With `with_pr`, also `pr`: `{"recall": [R], "precision": {name: [R]}, "scores": {name: [R]}}` at IoU 0.5, all
    areas, 100 detections (COCO's 101 recall points; precision -1 where the class has no ground truth; `scores`: the
    detection score at which each recall is reached, 0 where it is not).
    See `build_coco_dicts` for the per-image arrays.
    """
    from faster_coco_eval import COCO, COCOeval_faster

    category_ids = list(range(len(classes))) if category_ids is None else list(category_ids)
    dataset, results = build_coco_dicts(gt, detections, category_ids, image_ids, orig_sizes)
    coco_gt = COCO(dataset)
    coco_dt = COCO(_results_as_annotations(dataset, results))
    evaluator = COCOeval_faster(coco_gt, coco_dt, iouType="bbox", print_function=lambda *a, **k: None)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    metrics: dict[str, Any] = {name: float(v) for name, v in zip(_STAT_NAMES, evaluator.stats)}
    precision = np.asarray(evaluator.eval["precision"])  # (T iou, R recall, K class, A area, M maxDets)
    scores = np.asarray(evaluator.eval["scores"])  # the same shape
    order = list(evaluator.params.catIds)
    per_class: dict[str, float] = {}
    curves: dict[str, list[float]] = {}
    score_curves: dict[str, list[float]] = {}
    for name, category in zip(classes, category_ids):
        p = precision[:, :, order.index(int(category)), 0, -1]
        defined = p[p > -1]
        per_class[str(name)] = float(defined.mean()) if defined.size else -1.0
        curves[str(name)] = p[0].tolist()
        score_curves[str(name)] = scores[0, :, order.index(int(category)), 0, -1].tolist()
    metrics["per_class"] = per_class
    metrics["category_ids"] = [int(c) for c in category_ids]
    if with_pr:
        recall = list(map(float, evaluator.params.recThrs))
        metrics["pr"] = {"recall": recall, "precision": curves, "scores": score_curves}
        # Counted as `onedet predict` would keep the detections with the thresholds a run records from them.
        own = own_thresholds(metrics, classes)
        matrix = confusion_matrix(gt, detections, [DEFAULT_THRESHOLD if t is None else t for t in own])
        metrics["confusion"] = {
            "matrix": matrix.tolist(),
            "iou": CONFUSION_IOU,
            # null: no score of its own (never found, or no boxes here), so counted from `default_threshold`.
            "thresholds": {str(name): t for name, t in zip(classes, own)},
            "default_threshold": DEFAULT_THRESHOLD,
        }
    return metrics


def _iou(a: np.ndarray, b: np.ndarray, over_a: bool = False) -> np.ndarray:
    """IoU `[A, B]` of xyxy boxes; with `over_a`, the intersection over each `a` box's area (COCO's IoU with a
    crowd region)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clip(0).prod(-1)[:, None]
    if over_a:
        return inter / np.maximum(area_a, 1e-12)
    area_b = (b[:, 2:] - b[:, :2]).clip(0).prod(-1)[None, :]
    return inter / np.maximum(area_a + area_b - inter, 1e-12)


def confusion_matrix(
    gt: Sequence[dict[str, np.ndarray]],
    detections: Sequence[dict[str, np.ndarray]],
    thresholds: Sequence[float],
    iou_threshold: float = CONFUSION_IOU,
) -> np.ndarray:
    """Counts `[K + 1, K + 1]` (K classes): row = predicted class, column = true class; row K holds the objects no
    detection found (missed), column K the detections that found no object (false positives).

    Only detections of class k scoring at least `thresholds[k]` count. Matching is COCO's with the classes pooled:
    per image, detections in descending score each take the still unmatched object of highest IoU (at least
    `iou_threshold`), whatever the two classes. A detection that finds no object but covers a crowd region of its own
    class (or of unknown class) by `iou_threshold` of its area is not counted, as COCO ignores it; a crowd region is
    never a missed object. `gt` and `detections`: as `build_coco_dicts` takes them.

    Written here because faster-coco-eval's `PreviewResults` counts every crowd region nothing matched as a missed
    object and takes one score threshold for all classes; without crowds and with one threshold the two agree
    (tests/test_evaluate.py).
    """
    k = len(thresholds)
    limits = np.asarray(thresholds, dtype=np.float64)
    matrix = np.zeros((k + 1, k + 1), dtype=np.int64)
    for g, d in zip(gt, detections, strict=True):
        true_boxes = np.asarray(g["boxes_xyxy"], dtype=np.float64).reshape(-1, 4)
        true_labels = np.asarray(g["labels"]).reshape(-1).astype(np.int64)
        boxes = np.asarray(d["boxes_xyxy"], dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(d["scores"], dtype=np.float64).reshape(-1)
        labels = np.asarray(d["labels"]).reshape(-1).astype(np.int64)
        keep = scores >= limits[labels]
        order = np.argsort(-scores[keep], kind="stable")  # COCO's order: by score, ties as given
        boxes, labels = boxes[keep][order], labels[keep][order]
        crowd = np.asarray(g.get("crowd_boxes_xyxy", np.zeros((0, 4))), dtype=np.float64).reshape(-1, 4)
        crowd_labels = np.asarray(g.get("crowd_labels", np.full(len(crowd), -1))).reshape(-1)
        iou = _iou(boxes, true_boxes)
        on_crowd = _iou(boxes, crowd, over_a=True) >= iou_threshold  # [D, C]
        found = np.zeros(len(true_boxes), dtype=bool)
        for i, label in enumerate(labels):
            candidates = np.where(found, -1.0, iou[i])
            j = int(candidates.argmax()) if len(candidates) else -1
            if j >= 0 and candidates[j] >= iou_threshold:
                found[j] = True
                matrix[label, true_labels[j]] += 1
            elif not (on_crowd[i] & ((crowd_labels < 0) | (crowd_labels == label))).any():
                matrix[label, k] += 1
        np.add.at(matrix[k], true_labels[~found], 1)
    return matrix


def f1_curves(pr: dict[str, Any]) -> dict[str, tuple[np.ndarray, np.ndarray] | None]:
    """Per class, `(scores [R], f1 [R])` along `coco_metrics`' `pr` curves at IoU 0.5: the F1 a detection threshold
    of that score gives (COCO's 101 recall points, with COCO's interpolated precision, the best at this recall or
    more; F1 0 where the recall is never reached). None for a class without ground truth."""
    recall = np.asarray(pr["recall"], dtype=np.float64)
    curves: dict[str, tuple[np.ndarray, np.ndarray] | None] = {}
    for name, curve in pr["precision"].items():
        precision, scores = np.asarray(curve, dtype=np.float64), np.asarray(pr["scores"][name], dtype=np.float64)
        if (precision < 0).all():
            curves[name] = None
            continue
        f1 = np.where(precision > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
        curves[name] = (scores, f1)
    return curves


def best_f1_scores(pr: dict[str, Any]) -> dict[str, float | None]:
    """Per class, the detection score at which F1 at IoU 0.5 is best along `f1_curves`: a threshold for "is this
    detection an object". `math.inf` for a class with ground truth but no true positive (no score is good enough),
    None for a class without ground truth (nothing to judge by)."""
    best: dict[str, float | None] = {}
    for name, curve in f1_curves(pr).items():
        if curve is None:
            best[name] = None
            continue
        scores, f1 = curve
        best[name] = float(scores[int(f1.argmax())]) if f1.max() > 0 else math.inf
    return best


def own_thresholds(metrics: dict[str, Any], classes: Sequence[str]) -> list[float | None]:
    """Each class's own score threshold for prediction, by contiguous label (`onedet.runtime.SCORE_THRESHOLDS_KEY`),
    from `coco_metrics(..., with_pr=True)`: its best-F1 score, None for a class never found or without boxes (where
    prediction falls back to one threshold for all, `onedet.runtime.DEFAULT_THRESHOLD`)."""
    best = best_f1_scores(metrics["pr"])
    return [t if t is not None and math.isfinite(t) else None for t in (best[str(name)] for name in classes)]


def record_thresholds(
    folder: str | Path, metrics: dict[str, Any], classes: Sequence[str]
) -> tuple[Path, list[float | None]]:
    """Write `own_thresholds(metrics, classes)` into the checkpoint `folder`'s model.json (atomically, the file
    replaced: a `last/` sharing best's files keeps its own), where `load_run`, predict and export read them; returns
    the file and the thresholds."""
    from onedet.checkpoint import update_model_json

    own = own_thresholds(metrics, classes)
    return update_model_json(Path(folder), {SCORE_THRESHOLDS_KEY: own}), own


def ground_truth(batch: dict[str, Any], i: int) -> dict[str, np.ndarray]:
    """Image `i` of a `Store.read_batch` batch as `build_coco_dicts` ground truth, in original image pixels."""
    scale = np.float64(batch["scale"][i])  # float64 boxes, as COCO JSON holds them
    valid, crowd_valid = batch["valid"][i].numpy(), batch["crowd_valid"][i].numpy()
    return {
        "boxes_xyxy": batch["boxes_xyxy"][i].numpy()[valid] / scale,
        "labels": batch["labels"][i].numpy()[valid],
        "crowd_boxes_xyxy": batch["crowd_boxes_xyxy"][i].numpy()[crowd_valid] / scale,
        "crowd_labels": batch["crowd_labels"][i].numpy()[crowd_valid],
    }


class SplitDetections(NamedTuple):
    """A model's detections over a store split and the split's ground truth, in original image pixels, per image:
    `coco_metrics(*split, classes, category_ids, image_ids, orig_sizes)`'s inputs."""

    gt: list[dict[str, np.ndarray]]
    detections: list[dict[str, np.ndarray]]
    image_ids: list[int]
    orig_sizes: list[tuple[int, int]]


def _collect(store: Any, batch_size: int, progress: bool, detect: Any, device: Any = None) -> SplitDetections:
    """The loop both `detect_split`s share: the split read in batches (`store.read_batch`, uint8, on `device`),
    `detect(batch) -> (boxes [B, K, 4] in the letterboxed image's pixels, scores [B, K], labels [B, K] as the
    store's class indices)` as tensors, the boxes mapped back to original pixels (`to_original`: the store's
    letterbox scale, clipped) and gathered with the ground truth, mapped back the same way."""
    from onedet.model.postprocess import to_original

    split = SplitDetections([], [], [], [])
    bar = progress_bar(len(store), f"eval {Path(store.path).name}", "img") if progress else None
    for start in range(0, len(store), batch_size):
        batch = store.read_batch(np.arange(start, min(start + batch_size, len(store))), device=device)
        boxes, scores, labels = detect(batch)
        boxes = to_original(boxes.float(), batch["scale"].to(boxes.device), batch["orig_size"].to(boxes.device))
        boxes_np, scores_np, labels_np = boxes.cpu().numpy(), scores.float().cpu().numpy(), labels.cpu().numpy()
        for i in range(len(batch["index"])):
            split.gt.append(ground_truth(batch, i))
            split.detections.append({"boxes_xyxy": boxes_np[i], "scores": scores_np[i], "labels": labels_np[i]})
            split.image_ids.append(int(batch["image_id"][i]))
            split.orig_sizes.append((int(batch["orig_size"][i, 0]), int(batch["orig_size"][i, 1])))
        if bar is not None:
            bar.update(len(batch["index"]))
    if bar is not None:
        bar.close()
    return split


def detect_split(
    model: Any, store: Any, batch_size: int = EvalOptions.batch_size, k: int | None = None, progress: bool = False
) -> SplitDetections:
    """Run `model` (a `Detector`, switched to eval mode) over every image of a `Store` split.

    Images are read in batches with `store.read_batch` (uint8), passed as `[0, 1]` floats, decoded with
    `decode_topk` (k: the model config's `topk`, else 100) and mapped back to original pixels with the store's
    letterbox scale; the ground truth is mapped back the same way. `progress`: a bar on a terminal.
    """
    import torch

    from onedet.model.postprocess import decode_topk

    if k is None:
        k = int(getattr(getattr(model, "config", None), "topk", None) or 100)
    model.eval()
    device = next(model.parameters()).device

    def detect(batch: dict[str, Any]) -> tuple[Any, Any, Any]:
        out = model(batch["images"].to(device).float() / 255)
        return decode_topk(out.logits, out.boxes_xyxy, k)

    with torch.inference_mode():
        return _collect(store, batch_size, progress, detect, device)


def detect_split_onnx(
    detector: Any, store: Any, batch_size: int = EvalOptions.batch_size, progress: bool = False
) -> SplitDetections:
    """`detect_split` for an exported file (`OnnxDetector`): the store's images, uint8 as the graph takes them; the
    graph's boxes are in the letterboxed image's pixels (its own letterbox is the identity at the store's size), so
    they map back as the model's do, and its labels (the category ids the file was exported with) become the
    store's class indices, class by class (the caller checks that the classes are the same)."""
    import torch

    label_of = {c: i for i, c in enumerate(detector.category_ids)}

    def detect(batch: dict[str, Any]) -> tuple[Any, Any, Any]:
        images = np.ascontiguousarray(np.asarray(batch["images"]).transpose(0, 2, 3, 1))  # [B, 3, S, S] -> NHWC
        boxes, scores, labels = detector.run_batch(images)
        indices = np.vectorize(label_of.__getitem__, otypes=[np.int64])(labels)
        return torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(indices)

    return _collect(store, batch_size, progress, detect)


def evaluate_model(
    model: Any,
    store: Any,
    batch_size: int = EvalOptions.batch_size,
    k: int | None = None,
    with_pr: bool = False,
    progress: bool = False,
) -> dict:
    """COCO metrics of `model` (a `Detector`) over a `Store` split (`detect_split`, then `coco_metrics`)."""
    split = detect_split(model, store, batch_size, k, progress=progress)
    return coco_metrics(
        split.gt,
        split.detections,
        store.classes,
        store.category_ids,
        split.image_ids,
        split.orig_sizes,
        with_pr=with_pr,
    )


def evaluate_run(
    weights: Any,
    data: Any,
    batch_size: int = EvalOptions.batch_size,
    plots: str | Path | None = None,
    record: bool = EvalOptions.record,
    progress: bool = False,
) -> dict:
    """`load_run(weights)` + `Store(data)` + `evaluate_model(..., with_pr=True)`, with the run's classes checked
    against the store's: the metrics with `pr` and `confusion` (see `coco_metrics`).

    `weights`: a run or checkpoint folder, a `LoadedRun`, or an exported `.onnx` file (evaluated through onnxruntime
    on the same images: the file you ship, int8 or fp16 included); `data`: a store split path or a `Store`; `plots`:
    a folder to draw `pr.png`, `f1.png` and `confusion_matrix.png` into; `record`: write `own_thresholds` into the
    checkpoint's model.json (as training does at its end) and return them as `recorded: {file, score_thresholds}`;
    `progress`: a progress bar on a terminal (`onedet eval` shows one).
    """
    from onedet.data.store import Store
    from onedet.errors import OnedetError

    if batch_size < 1:
        raise OnedetError(f"--batch-size must be at least 1, got {batch_size}")
    onnx = isinstance(weights, (str, Path)) and Path(weights).suffix.lower() == ".onnx"
    if onnx and record:
        raise OnedetError(
            f"{weights}: --record writes a checkpoint's model.json, and an ONNX file keeps its thresholds in its "
            "metadata: record them on the run (onedet eval --weights RUN --record) and export it again"
        )
    store = data if isinstance(data, Store) else Store(data)
    if onnx:
        metrics = _evaluate_onnx_file(Path(weights), store, batch_size, progress)
    else:
        metrics = _evaluate_checkpoint(weights, store, batch_size, record, progress)
    if plots is not None:
        from onedet.train.report import write_metric_plots

        Path(plots).mkdir(parents=True, exist_ok=True)
        write_metric_plots(metrics, list(store.classes), Path(plots))
    return metrics


def _evaluate_onnx_file(path: Path, store: Any, batch_size: int, progress: bool) -> dict:
    from onedet.errors import OnedetError
    from onedet.runtime import OnnxDetector

    detector = OnnxDetector(path)
    if list(detector.classes) != list(store.classes):
        raise OnedetError(f"{store.path}: the store's classes {store.classes} differ from {path}'s {detector.classes}")
    split = detect_split_onnx(detector, store, batch_size, progress)
    return coco_metrics(
        split.gt, split.detections, store.classes, store.category_ids, split.image_ids, split.orig_sizes, with_pr=True
    )


def _evaluate_checkpoint(weights: Any, store: Any, batch_size: int, record: bool, progress: bool) -> dict:
    from onedet.checkpoint import load_run
    from onedet.errors import OnedetError

    if isinstance(weights, (str, Path)):
        import torch

        run = load_run(weights, device="cuda" if torch.cuda.is_available() else "cpu")
    else:
        run = weights
    if list(run.classes) != list(store.classes):
        raise OnedetError(
            f"{store.path}: the store's classes {store.classes} differ from the model's {list(run.classes)}"
        )
    metrics = evaluate_model(run.model, store, batch_size=batch_size, with_pr=True, progress=progress)
    if record:
        folder = getattr(run, "folder", None)
        if folder is None:
            raise OnedetError("record: these weights were not read from a checkpoint folder, so there is none to write")
        path, own = record_thresholds(folder, metrics, store.classes)
        metrics["recorded"] = {"file": str(path), "score_thresholds": own}
    return metrics


def format_metrics(metrics: dict[str, Any], category_ids: Sequence[int] | None = None) -> str:
    """A readable table: the summary numbers in percent, then AP per class with the dataset's own ids, and with
    `confusion` (metrics evaluated `with_pr`) each class's counts at its best-F1 score: its objects found as
    itself, found as another class, missed, and its false positives."""

    def pct(v: float) -> str:
        return "    -" if v < 0 else f"{100 * v:5.1f}"

    lines = [
        "COCO box AP in % (IoU 0.50:0.95 unless named; s/m/l: small/medium/large; '-': nothing to measure)",
        "  ".join(f"{name:>5}" for name in _STAT_NAMES),
        "  ".join(pct(metrics[n]) for n in _STAT_NAMES),
    ]
    per_class = metrics.get("per_class", {})
    if not per_class:
        return "\n".join(lines)
    ids = metrics.get("category_ids", category_ids)
    width = max(len("class"), *(len(name) for name in per_class))
    confusion = metrics.get("confusion")
    counts = ""
    if confusion is not None:
        counts = (
            f"  {'objects':>7}  {'found':>5}  {'as other':>8}  {'missed':>6}  {'false pos.':>10}  {'from score':>10}"
        )
        matrix = np.asarray(confusion["matrix"])
    lines += ["", f"{'id':>6}  {'class':<{width}}  {'AP':>5}{counts}"]
    for i, (name, ap) in enumerate(per_class.items()):
        cid = str(ids[i]) if ids is not None else str(i)
        line = f"{cid:>6}  {name:<{width}}  {pct(ap)}"
        if confusion is not None:
            column, found = matrix[:, i], int(matrix[i, i])
            score = confusion["thresholds"].get(name)
            shown = f"{confusion.get('default_threshold', DEFAULT_THRESHOLD):.2f}*" if score is None else f"{score:.2f}"
            line += (
                f"  {int(column.sum()):>7}  {found:>5}  {int(column[:-1].sum()) - found:>8}  {int(column[-1]):>6}"
                f"  {int(matrix[i, -1]):>10}  {shown:>10}"
            )
        lines.append(line)
    if confusion is not None:
        lines += [
            f"(counts at IoU {confusion['iou']}, each class's detections from the score where its F1 is best: on the",
            " val split, the threshold a run records and `onedet predict` uses; *: no score of its own, as the class",
            " is never found or has no boxes here, so from the default, as predict does)",
        ]
    return "\n".join(lines)
