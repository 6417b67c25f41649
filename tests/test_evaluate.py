"""COCO metrics through faster-coco-eval equal pycocotools' (the reference) on the same data."""

import numpy as np
import pytest

from onedet.evaluate import build_coco_dicts, coco_metrics, format_metrics

CLASSES = ["cat", "dog", "bird"]
CATEGORY_IDS = [3, 17, 42]  # the dataset's own ids, not 0..C-1


def _case(seed=0):
    """Random-ish ground truth (crowd regions, an image without boxes, all three sizes) and noisy detections."""
    rng = np.random.default_rng(seed)
    gt, det = [], []
    for i in range(16):
        m = 0 if i in (3, 9) else int(rng.integers(1, 8))
        xy = rng.uniform(0, 400, (m, 2))
        wh = rng.choice([12.0, 60.0, 180.0], (m, 1)) * rng.uniform(0.5, 1.5, (m, 2))  # small, medium, large
        boxes = np.concatenate([xy, xy + wh], 1)
        g = {"boxes_xyxy": boxes, "labels": rng.integers(0, 3, m)}
        if i % 5 == 1:
            g["crowd_boxes_xyxy"] = np.array([[20.0, 20.0, 220.0, 200.0]])
        gt.append(g)
        k = int(rng.integers(0, 20))
        if m and k:
            src = boxes[rng.integers(0, m, k)]
            noisy = src + rng.normal(0, 1, (k, 4)) * np.tile(src[:, 2:] - src[:, :2], 2) * 0.1
        else:
            noisy = rng.uniform(0, 400, (k, 4))
        noisy[:, 2:] = np.maximum(noisy[:, 2:], noisy[:, :2] + 1)
        labels = np.where(
            rng.uniform(size=k) < 0.8, g["labels"][rng.integers(0, max(m, 1), k)] if m else 0, rng.integers(0, 3, k)
        )
        det.append({"boxes_xyxy": noisy, "scores": rng.uniform(0, 1, k), "labels": labels})
    return gt, det


def _pycocotools(gt, det, image_ids=None):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    dataset, results = build_coco_dicts(gt, det, CATEGORY_IDS, image_ids)
    coco_gt = COCO()
    coco_gt.dataset = dataset
    coco_gt.createIndex()
    evaluator = COCOeval(coco_gt, coco_gt.loadRes(results), "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return evaluator


@pytest.mark.parametrize("seed", [0, 1])
def test_equals_pycocotools(seed):
    pytest.importorskip("pycocotools")
    gt, det = _case(seed)
    image_ids = [100 + 7 * i for i in range(len(gt))]
    ours = coco_metrics(gt, det, CLASSES, CATEGORY_IDS, image_ids=image_ids, with_pr=True)
    ref = _pycocotools(gt, det, image_ids)
    for i, name in enumerate(["AP", "AP50", "AP75", "APs", "APm", "APl"]):
        assert ours[name] == pytest.approx(ref.stats[i], abs=1e-6), name
    assert 0 < ours["AP"] < 1 and ours["APs"] >= 0  # a non-trivial case with small boxes
    precision = ref.eval["precision"]
    for k, name in enumerate(CLASSES):
        p = precision[:, :, k, 0, -1]
        assert ours["per_class"][name] == pytest.approx(p[p > -1].mean(), abs=1e-6)
        np.testing.assert_allclose(ours["pr"]["precision"][name], p[0], atol=1e-6)
    np.testing.assert_allclose(ours["pr"]["recall"], ref.params.recThrs)
    assert ours["category_ids"] == CATEGORY_IDS


def test_crowd_regions_are_ignored():
    gt = [{"boxes_xyxy": np.array([[0.0, 0.0, 50.0, 50.0]]), "labels": np.array([0]),
           "crowd_boxes_xyxy": np.array([[100.0, 100.0, 300.0, 300.0]])}]  # fmt: skip
    hit = {"boxes_xyxy": np.array([[0.0, 0.0, 50.0, 50.0]]), "scores": np.array([0.5]), "labels": np.array([0])}
    on_crowd = {"boxes_xyxy": np.array([[120.0, 120.0, 200.0, 200.0]]), "scores": np.array([0.9]), "labels": [0]}
    both = {k: np.concatenate([np.asarray(on_crowd[k]), np.asarray(hit[k])]) for k in hit}
    # A confident detection on the crowd ranks first; ignored, it does not cost precision.
    assert coco_metrics(gt, [both], CLASSES)["AP50"] == pytest.approx(1.0)
    del gt[0]["crowd_boxes_xyxy"]
    assert coco_metrics(gt, [both], CLASSES)["AP50"] < 0.6


def test_no_detections_and_classes_without_ground_truth():
    gt, _ = _case()
    empty = [{"boxes_xyxy": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, int)} for _ in gt]
    metrics = coco_metrics(gt, empty, CLASSES, CATEGORY_IDS)
    assert metrics["AP"] == 0 and metrics["per_class"]["cat"] == 0
    only_cats = [{"boxes_xyxy": g["boxes_xyxy"][g["labels"] == 0], "labels": g["labels"][g["labels"] == 0]} for g in gt]
    metrics = coco_metrics(only_cats, empty, CLASSES, CATEGORY_IDS)
    assert metrics["per_class"]["dog"] == -1  # nothing to measure, as COCO reports it


def test_format_metrics_shows_dataset_ids_and_names():
    gt, det = _case()
    text = format_metrics(coco_metrics(gt, det, CLASSES, CATEGORY_IDS))
    assert "AP50" in text and "APl" in text
    assert any(line.split()[:2] == ["42", "bird"] for line in text.splitlines())
