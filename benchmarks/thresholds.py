"""Each class's own score threshold, chosen on val, against one threshold for every class: F1 on the test split.

    .venv/bin/python benchmarks/thresholds.py --data STORE RUN[=LABEL] [RUN[=LABEL] ...] [--threads 2]

For each run (a run folder trained on STORE, which has val and test splits), the detections on val give each
class's own threshold: the score where its F1 at IoU 0.5 is best (`evaluate.own_thresholds`, what training
records in `weights/best/model.json` and `onedet predict` uses by default; runs trained before it was recorded
get it computed here the same way). The detections on test are then counted at IoU 0.5
(`evaluate.confusion_matrix`, found / missed / false positives per class) under each policy:

- `fixed T`: one threshold for every class (0.3 is predict's threshold for a class without its own, and was its
  only one before; 0.25 and 0.5 are other common defaults);
- `own (val)`: each class's own, from val (0.3 where val gives none);
- `best on test`: each class's best-F1 score on test itself. Not a policy anyone can use (the thresholds are
  chosen on the data they are scored on): the ceiling for the other rows.

Prints per run each policy's macro F1 (the mean of the classes' F1) and own's as a ratio to `fixed 0.3`'s, all
from the same detections (one forward pass per split and run), then each policy's ratio over the runs; with
`--per-class`, each class's F1, the macro and the pooled F1 of every run and policy.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

FIXED = (0.25, 0.3, 0.5)


def f1_per_class(matrix: np.ndarray) -> tuple[list[float], float]:
    """Per class F1 (nan for a class with neither objects nor detections) and the pooled F1 of a confusion matrix
    (`evaluate.confusion_matrix`: row = predicted class, column = true class, the last row/column background)."""
    k = matrix.shape[0] - 1
    true_positives = np.diag(matrix)[:k].astype(float)
    predicted, objects = matrix[:k, :].sum(1), matrix[:, :k].sum(0)
    per_class = [2 * tp / (p + o) if p + o else math.nan for tp, p, o in zip(true_positives, predicted, objects)]
    pooled = 2 * true_positives.sum() / max(predicted.sum() + objects.sum(), 1)
    return per_class, float(pooled)


def _detect(model: object, store: object) -> tuple:
    """`(SplitDetections, coco_metrics with_pr)` of `model` over the store split."""
    from onedet.evaluate import coco_metrics, detect_split

    split = detect_split(model, store)
    metrics = coco_metrics(split.gt, split.detections, store.classes, store.category_ids, with_pr=True)  # type: ignore[attr-defined]
    return split, metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="RUN or RUN=LABEL: a run folder trained on --data")
    parser.add_argument("--data", type=Path, required=True, help="the store (with val and test splits)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--per-class", action="store_true", help="also print each class's F1 under each policy")
    args = parser.parse_args()

    import torch

    from onedet.checkpoint import load_run
    from onedet.data.store import Store
    from onedet.evaluate import confusion_matrix, own_thresholds
    from onedet.runtime import DEFAULT_THRESHOLD

    torch.set_num_threads(args.threads)
    val, test = Store(args.data / "val"), Store(args.data / "test")
    classes = list(val.classes)
    names = [f"fixed {t:g}" for t in FIXED] + ["own (val)", "best on test"]
    summary = ["| run | test AP | " + " | ".join(f"macro F1, {n}" for n in names) + " | own / fixed 0.3 |"]
    summary.append("| --- | ---: |" + " ---: |" * (len(names) + 1))
    detail = [f"| run | policy | {' | '.join(f'F1 {c}' for c in classes)} | macro F1 | pooled F1 |"]
    detail.append("| --- | --- |" + " ---: |" * (len(classes) + 2))
    ratios: dict[str, list[float]] = {n: [] for n in names}
    for spec in args.runs:
        path, _, label = spec.partition("=")
        label = label or path
        run = load_run(Path(path))
        if list(run.classes) != classes:
            raise SystemExit(f"{path}: classes {run.classes} are not the store's {classes}")
        own = run.score_thresholds or own_thresholds(_detect(run.model, val)[1], classes)  # val only if unrecorded
        split, test_metrics = _detect(run.model, test)
        chosen = {
            **{f"fixed {t:g}": [t] * len(classes) for t in FIXED},
            "own (val)": own,
            "best on test": own_thresholds(test_metrics, classes),
        }
        macro = {}
        for name, thresholds in chosen.items():
            thresholds = [DEFAULT_THRESHOLD if t is None else t for t in thresholds]
            per_class, pooled = f1_per_class(confusion_matrix(split.gt, split.detections, thresholds))
            macro[name] = float(np.nanmean(per_class))
            cells = " | ".join(f"{f:.3f}" for f in per_class)
            shown = name if name.startswith("fixed") else f"{name}: {', '.join(f'{t:.2f}' for t in thresholds)}"
            detail.append(f"| {label} | {shown} | {cells} | {macro[name]:.3f} | {pooled:.3f} |")
        for name in names:
            ratios[name].append(macro[name] / macro["fixed 0.3"] if macro["fixed 0.3"] else math.nan)
        cells = " | ".join(f"{macro[n]:.3f}" for n in names)
        summary.append(f"| {label} | {test_metrics['AP']:.3f} | {cells} | {ratios['own (val)'][-1]:.3f} |")
        print(summary[-1], flush=True)
    print("\n" + "\n".join(summary))
    if args.per_class:
        print("\n" + "\n".join(detail))
    print(f"\nmacro F1 / fixed 0.3's over {len(args.runs)} runs (median, min, max):")
    for name in names:
        r = np.asarray(ratios[name])
        better, worse = int((r > 1.0005).sum()), int((r < 0.9995).sum())
        spread = f"{np.nanmedian(r):.3f} ({np.nanmin(r):.3f}, {np.nanmax(r):.3f})"
        print(f"  {name}: {spread}; above in {better} runs, below in {worse}")


if __name__ == "__main__":
    main()
