"""The end-of-run figures of the best checkpoint: per-class precision-recall and F1 curves (`pr.png`, `f1.png`), the
confusion matrix (`confusion_matrix.png`) and its predictions on the first validation images (`predictions.png`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from onedet.evaluate import f1_curves
from onedet.model.postprocess import decode_topk
from onedet.train.plots import plot_confusion_matrix, plot_f1, plot_precision_recall, plot_predictions

METRIC_PLOTS = ("pr.png", "f1.png", "confusion_matrix.png")
"""What `write_metric_plots` writes, in order."""


def write_metric_plots(metrics: dict[str, Any], classes: list[str], out: Path) -> list[Path]:
    """`METRIC_PLOTS` in `out` from `coco_metrics(..., with_pr=True)` (its `pr` and `confusion`); returns their
    paths."""
    pr = metrics["pr"]
    recall = np.asarray(pr["recall"])
    curves = {}
    for name, precision in pr["precision"].items():
        precision = np.asarray(precision)
        if (precision >= 0).any():
            curves[name] = (recall, np.clip(precision, 0, None))
    f1 = {name: curve for name, curve in f1_curves(pr).items() if curve is not None}
    matrix = np.asarray(metrics["confusion"]["matrix"])
    iou = metrics["confusion"]["iou"]
    title = f"confusion matrix (IoU {iou:g}; each class's detections from the score of its best F1)"
    pr_path, f1_path, confusion_path = (out / name for name in METRIC_PLOTS)
    return [
        plot_precision_recall(curves, pr_path),
        plot_f1(f1, f1_path),
        plot_confusion_matrix(matrix, classes, confusion_path, title=title),
    ]


def write_final_plots(
    model: nn.Module, metrics: dict[str, Any], val_store: Any, classes: list[str], out: Path, device: torch.device
) -> None:
    """`write_metric_plots`, and `predictions.png` of `model` (images in [0, 1] -> `DetectorOutput`) on up to 8
    images of `val_store`, with their true boxes."""
    write_metric_plots(metrics, classes, out)
    count = min(8, len(val_store))
    raw = val_store.read_batch(np.arange(count))
    images = torch.as_tensor(raw["images"])
    model.eval()
    with torch.inference_mode():
        output = model(images.to(device).float() / 255)
        boxes, scores, labels = decode_topk(output.logits.float(), output.boxes_xyxy.float(), 20)
    valid = torch.as_tensor(raw["valid"])
    plot_predictions(
        [im.permute(1, 2, 0).numpy() for im in images],
        boxes.cpu().numpy(),
        labels.cpu().numpy(),
        scores.cpu().numpy(),
        classes,
        out / "predictions.png",
        truth_xyxy=[torch.as_tensor(raw["boxes_xyxy"])[i][valid[i]].numpy() for i in range(count)],
    )
