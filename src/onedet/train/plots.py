"""PNG plots of a run (matplotlib, Agg backend): loss and mAP curves, per-class precision-recall and F1, the
confusion matrix, predictions; and of a store split's boxes.

All functions take plain arrays and write one file, so they work the same during training, from a finished
run's `metrics.csv`, and in the benchmarks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import matplotlib

matplotlib.use("Agg")  # no display here, and none needed

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import patches, ticker
from matplotlib.colors import ListedColormap

from onedet.config import ModelConfig

# tab10 is a ListedColormap, whose colors are a tuple of RGB tuples
_COLORS = cast("tuple[tuple[float, float, float], ...]", cast(ListedColormap, plt.get_cmap("tab10")).colors)


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def _unit_axes(ax: Any, xlabel: str, ylabel: str, title: str, legend: bool) -> None:
    """Axes of a curve between 0 and 1 on both axes (precision-recall, F1 against the score)."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize=7, loc="lower left")
    ax.set_title(title)


def plot_curves(rows: Sequence[dict[str, float]], path: Path, title: str = "") -> Path:
    """Train loss (and its terms) and validation AP / AP50 against the epoch, from `metrics.csv` rows."""
    fig, (ax_loss, ax_ap) = plt.subplots(1, 2, figsize=(11, 4))
    epochs = [r["epoch"] for r in rows]
    loss_keys = sorted({k for r in rows for k in r if k == "loss" or k.startswith("train/")})
    for key in loss_keys:
        xs = [r["epoch"] for r in rows if key in r]
        ax_loss.plot(
            xs, [r[key] for r in rows if key in r], label=key.removeprefix("train/"), lw=2 if key == "loss" else 1
        )
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("train loss")
    ax_loss.set_yscale("log")
    if loss_keys:
        ax_loss.legend(fontsize=7)
    for key in ("AP", "AP50", "AP75"):
        pts = [(r["epoch"], r[key]) for r in rows if key in r]
        if pts:
            ax_ap.plot(*zip(*pts), marker="o", ms=3, label=key)
    ax_ap.set_xlabel("epoch")
    ax_ap.set_ylabel("validation mAP")
    ax_ap.set_ylim(0, 1)
    ax_ap.grid(alpha=0.3)
    if any("AP" in r for r in rows):
        ax_ap.legend()
    if epochs:
        ax_ap.set_xlim(left=min(epochs) - 0.5)
    fig.suptitle(title)
    return _save(fig, path)


def plot_precision_recall(
    curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str = "precision-recall (IoU 0.5)"
) -> Path:
    """One precision-recall curve per class: `curves[name] = (recall [R], precision [R])`, AP in the legend."""
    fig, ax = plt.subplots(figsize=(6, 5))
    for i, (name, (recall, precision)) in enumerate(curves.items()):
        recall, precision = np.asarray(recall), np.asarray(precision)
        ap = float(np.trapezoid(precision, recall)) if len(recall) > 1 else 0.0
        ax.plot(recall, precision, color=_COLORS[i % len(_COLORS)], label=f"{name} ({ap:.2f})")
    _unit_axes(ax, "recall", "precision", title, legend=bool(curves))
    return _save(fig, path)


def plot_f1(
    curves: dict[str, tuple[np.ndarray, np.ndarray]],
    path: Path,
    title: str = "F1 against the score threshold (IoU 0.5)",
) -> Path:
    """One F1-against-score curve per class (`evaluate.f1_curves`), the best point marked and named in the legend:
    where to set a detection threshold."""
    fig, ax = plt.subplots(figsize=(6, 5))
    for i, (name, (scores, f1)) in enumerate(curves.items()):
        scores, f1 = np.asarray(scores), np.asarray(f1)
        reached = f1 > 0
        color = _COLORS[i % len(_COLORS)]
        if not reached.any():
            ax.plot([], [], color=color, label=f"{name} (never found)")
            continue
        best = int(f1.argmax())
        ax.plot(scores[reached], f1[reached], color=color, label=f"{name} ({f1[best]:.2f} at {scores[best]:.2f})")
        ax.plot(scores[best], f1[best], "o", color=color)
    _unit_axes(ax, "score threshold", "F1", title, legend=bool(curves))
    return _save(fig, path)


def plot_confusion_matrix(
    matrix: np.ndarray, classes: Sequence[str], path: Path, title: str = "confusion matrix (IoU 0.5)"
) -> Path:
    """`evaluate.confusion_matrix`'s counts `[K + 1, K + 1]` (row predicted, column true, index K background) as a
    heat map: each true class's column divided by its objects (where its objects went), the background column by
    all false positives (which classes they claim); the counts are written in the cells up to 30 classes."""
    matrix = np.asarray(matrix, dtype=np.float64)
    names = [*map(str, classes), "background"]
    fractions = matrix / np.maximum(matrix.sum(0, keepdims=True), 1)
    size = min(4 + 0.45 * len(names), 24)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(fractions, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the column")
    if len(names) <= 31:
        for (row, col), count in np.ndenumerate(matrix):
            if count:
                color = "white" if fractions[row, col] > 0.5 else "black"
                ax.text(col, row, f"{int(count)}", ha="center", va="center", color=color, fontsize=7)
    ticks = np.arange(len(names))
    ax.set_xticks(ticks, names, rotation=90 if len(names) > 8 else 0, fontsize=7)
    ax.set_yticks(ticks, names, fontsize=7)
    ax.set_xlabel("true class (background: false positives)")
    ax.set_ylabel("predicted class (background: missed objects)")
    ax.set_title(title)
    return _save(fig, path)


def plot_boxes(
    boxes: dict[str, np.ndarray],
    classes: Sequence[str],
    image_size: int,
    path: Path,
    title: str = "",
    strides: Sequence[int] = ModelConfig.strides,
    max_points: int = 20000,
) -> Path:
    """A store split's boxes (`Store.boxes()`) in four panels: boxes per class; width against height in original
    pixels; centres relative to their image; and the side (square root of the area) in store pixels, the size
    the model sees at `image_size`, against the pyramid's `strides` (a box much smaller than the finest stride
    covers less than one location there; the model's default ones unless given). At most `max_points` boxes are
    scattered (a seeded sample)."""
    labels = np.asarray(boxes["labels"], dtype=np.int64)
    orig = np.asarray(boxes["orig_boxes_xyxy"], dtype=np.float64).reshape(-1, 4)
    seen = np.asarray(boxes["boxes_xyxy"], dtype=np.float64).reshape(-1, 4)
    sizes = np.asarray(boxes["orig_size"], dtype=np.float64).reshape(-1, 2)[np.asarray(boxes["image"], dtype=int)]
    fig, ((ax_count, ax_wh), (ax_xy, ax_side)) = plt.subplots(2, 2, figsize=(11, 9))
    counts = np.bincount(labels, minlength=len(classes))[: len(classes)]
    ax_count.barh(np.arange(len(classes)), counts, color=[_COLORS[i % len(_COLORS)] for i in range(len(classes))])
    ax_count.set_yticks(np.arange(len(classes)), [str(c) for c in classes], fontsize=7 if len(classes) > 20 else 9)
    ax_count.invert_yaxis()
    ax_count.set_xlabel("boxes")
    ax_count.set_title(f"{len(labels)} boxes in {len(boxes['orig_size'])} images")
    pick = np.arange(len(labels))
    if len(pick) > max_points:
        pick = np.sort(np.random.default_rng(0).choice(len(pick), max_points, replace=False))
    wh = np.clip(orig[pick, 2:] - orig[pick, :2], 1e-3, None)
    colors = [_COLORS[int(c) % len(_COLORS)] for c in labels[pick]]
    ax_wh.scatter(wh[:, 0], wh[:, 1], s=4, c=colors, alpha=0.5, linewidths=0)
    if len(pick):  # a log scale of nothing fails
        _plain_log(ax_wh, "xy")
    if len(classes) <= 10:  # the bars above name the colours; a legend helps beside them only for a few classes
        for i, name in enumerate(classes):
            ax_wh.scatter([], [], s=12, color=_COLORS[i % len(_COLORS)], label=str(name))
        ax_wh.legend(fontsize=7, markerscale=1.5)
    ax_wh.set_xlabel("width (original pixels)")
    ax_wh.set_ylabel("height (original pixels)")
    ax_wh.grid(alpha=0.3, which="both")
    centre = ((orig[:, :2] + orig[:, 2:]) / 2) / np.maximum(sizes[:, ::-1], 1)  # (x / w, y / h)
    ax_xy.hist2d(centre[:, 0], centre[:, 1], bins=32, range=[[0, 1], [0, 1]], cmap="Blues")
    ax_xy.invert_yaxis()  # image coordinates: y down
    ax_xy.set_aspect("equal")
    ax_xy.set_xlabel("centre x / image width")
    ax_xy.set_ylabel("centre y / image height")
    side = np.sqrt(np.clip(seen[:, 2:] - seen[:, :2], 0, None).prod(-1))
    if len(side):
        bins = np.geomspace(max(side.min(), 0.5), max(side.max(), 1.0) * 1.01, 40)
        ax_side.hist(side, bins=bins, color="tab:blue")
        _plain_log(ax_side, "x")
    for stride in strides:
        ax_side.axvline(stride, color="tab:red", ls="--", lw=1)
        ax_side.text(
            stride,
            1,
            f" stride {stride}",
            color="tab:red",
            fontsize=7,
            transform=ax_side.get_xaxis_transform(),
            va="top",
        )
    ax_side.set_xlabel(f"box side, sqrt(w h), in pixels at the {image_size} px input")
    ax_side.set_ylabel("boxes")
    fig.suptitle(title)
    return _save(fig, path)


def _plain_log(ax: Any, which: str) -> None:
    """Log scales on the `which` ("x", "y", "xy") axes of `ax`, labelled 20, 50, 100 rather than 2x10^1."""
    for name in which:
        getattr(ax, f"set_{name}scale")("log")
        axis = getattr(ax, f"{name}axis")
        axis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(ticker.ScalarFormatter())
        axis.set_minor_formatter(ticker.NullFormatter())


def plot_predictions(
    images: Sequence[np.ndarray],
    boxes_xyxy: Sequence[np.ndarray] | np.ndarray,
    labels: Sequence[np.ndarray] | np.ndarray,
    scores: Sequence[np.ndarray] | np.ndarray,
    classes: Sequence[str],
    path: Path,
    *,
    threshold: float = 0.3,
    truth_xyxy: Sequence[np.ndarray] | None = None,
    columns: int = 4,
) -> Path:
    """A grid of images `[H, W, 3]` uint8 with predicted boxes (coloured by class, score >= threshold) and,
    optionally, the ground truth dashed in white."""
    n = len(images)
    columns = max(1, min(columns, n))
    rows = max(1, math.ceil(n / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        ax = axes.flat[i]
        ax.imshow(images[i])
        if truth_xyxy is not None:
            for x0, y0, x1, y1 in np.asarray(truth_xyxy[i]).reshape(-1, 4):
                ax.add_patch(patches.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="white", ls="--", lw=1))
        for (x0, y0, x1, y1), label, score in zip(
            np.asarray(boxes_xyxy[i]).reshape(-1, 4), np.asarray(labels[i]).ravel(), np.asarray(scores[i]).ravel()
        ):
            if score < threshold:
                continue
            color = _COLORS[int(label) % len(_COLORS)]
            ax.add_patch(patches.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec=color, lw=1.5))
            name = classes[int(label)] if 0 <= int(label) < len(classes) else str(int(label))
            ax.text(
                x0,
                y0,
                f"{name} {score:.2f}",
                color="black",
                fontsize=6,
                va="bottom",
                bbox={"facecolor": color, "alpha": 0.8, "pad": 1, "lw": 0},
            )
    return _save(fig, path)
