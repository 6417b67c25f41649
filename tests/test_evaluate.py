"""COCO metrics through faster-coco-eval equal pycocotools' (the reference) on the same data."""

import json
from typing import NamedTuple

import numpy as np
import pytest
import torch

from onedet.evaluate import (
    best_f1_scores,
    build_coco_dicts,
    coco_metrics,
    confusion_matrix,
    format_metrics,
    own_thresholds,
)
from onedet.runtime import DEFAULT_THRESHOLD

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
        np.testing.assert_allclose(ours["pr"]["scores"][name], ref.eval["scores"][0, :, k, 0, -1], atol=1e-6)
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


def _f1_case():
    """One image, 4 cats and 2 dogs; each detection is either a true box (a true positive) or far from every box (a
    false positive), so precision and recall at each threshold can be counted by hand."""
    cats = np.array([[0.0, 0.0, 40, 40], [100, 0, 140, 40], [0, 100, 40, 140], [100, 100, 140, 140]])
    dogs = np.array([[200.0, 200, 260, 260], [300, 300, 360, 360]])
    far = np.array([[500.0, 500, 520, 520]]) + np.arange(5)[:, None] * 30  # 5 boxes far from every true one
    # (score, box, true positive): cats TP TP FP TP FP FP (F1 .40 .67 .57 .75 .67 .60), dogs FP FP; no birds
    cat_hits = [(0.9, cats[0], 1), (0.8, cats[1], 1), (0.7, far[0], 0), (0.6, cats[2], 1), (0.5, far[1], 0),
                (0.4, far[2], 0)]  # fmt: skip
    hits = [(s, b, 0) for s, b, _ in cat_hits] + [(0.95, far[3], 1), (0.85, far[4], 1)]
    gt = [{"boxes_xyxy": np.concatenate([cats, dogs]), "labels": np.array([0, 0, 0, 0, 1, 1])}]
    det = [{"boxes_xyxy": np.stack([b for _, b, _ in hits]), "scores": np.array([s for s, _, _ in hits]),
            "labels": np.array([c for _, _, c in hits])}]  # fmt: skip
    return gt, det, cat_hits


def test_best_f1_scores_pick_the_threshold_of_the_best_f1():
    gt, det, cat_hits = _f1_case()

    def f1(threshold: float) -> float:  # of the cats, counted by hand
        kept = [tp for s, _, tp in cat_hits if s >= threshold]
        precision, recall = sum(kept) / len(kept), sum(kept) / 4
        return 2 * precision * recall / (precision + recall)

    expected = max((s for s, _, _ in cat_hits), key=f1)
    assert expected == 0.6
    best = best_f1_scores(coco_metrics(gt, det, CLASSES, CATEGORY_IDS, with_pr=True)["pr"])
    assert best["cat"] == pytest.approx(expected)
    assert best["dog"] == float("inf")  # boxes, but no score finds one
    assert best["bird"] is None  # no boxes to judge by
    # What predict takes as each class's own threshold, by label: none where F1 chose none.
    own = own_thresholds(coco_metrics(gt, det, CLASSES, CATEGORY_IDS, with_pr=True), CLASSES)
    assert own == [pytest.approx(expected), None, None]
    json.dumps(own, allow_nan=False)  # model.json and the ONNX metadata hold it


def test_the_confusion_matrix_counts_what_predict_keeps():
    """The `_f1_case` by hand, each class from the threshold predict would take after training on it: cats from
    their best-F1 score 0.6 (3 found, 1 false positive, 1 missed); dogs, which no score finds, from the default 0.3
    (both dog detections are false positives, both dogs missed); birds (no boxes) from the default too (none)."""
    gt, det, _ = _f1_case()
    metrics = coco_metrics(gt, det, CLASSES, CATEGORY_IDS, with_pr=True)
    confusion = metrics["confusion"]
    expected = np.zeros((4, 4), dtype=int)
    expected[0, 0], expected[0, 3], expected[3, 0] = 3, 1, 1
    expected[1, 3], expected[3, 1] = 2, 2
    np.testing.assert_array_equal(confusion["matrix"], expected)
    assert confusion["thresholds"] == {"cat": pytest.approx(0.6), "dog": None, "bird": None}
    assert list(confusion["thresholds"].values()) == own_thresholds(metrics, CLASSES), "what a run records"
    assert confusion["default_threshold"] == DEFAULT_THRESHOLD == 0.3
    json.dumps(confusion, allow_nan=False)  # metrics.json must stay valid JSON
    assert "confusion" not in coco_metrics(gt, det, CLASSES, CATEGORY_IDS)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_confusion_matrix_equals_faster_coco_eval_preview_results(seed):
    """Against faster-coco-eval's own confusion matrix (`PreviewResults`: COCO's matching with the classes pooled),
    on the random case without its crowd regions (which PreviewResults counts as missed objects) at one threshold."""
    from faster_coco_eval import COCO
    from faster_coco_eval.extra import PreviewResults

    gt, det = _case(seed)
    gt = [{k: v for k, v in g.items() if not k.startswith("crowd")} for g in gt]
    threshold = 0.3
    dataset, results = build_coco_dicts(gt, det, CATEGORY_IDS)
    coco_gt = COCO(dataset)
    reference = PreviewResults(coco_gt, coco_gt.loadRes(results), iou_tresh=0.5, min_score=threshold)
    ref = reference.compute_confusion_matrix()  # [K, K + 2]: row true, column predicted, then FP and FN by class
    ours = confusion_matrix(gt, det, [threshold] * len(CLASSES))
    k = len(CLASSES)
    np.testing.assert_array_equal(ours[:k, :k], ref[:, :k].T)
    np.testing.assert_array_equal(ours[:k, k], ref[:, k])  # false positives of each predicted class
    np.testing.assert_array_equal(ours[k, :k], ref[:, k + 1])  # missed objects of each class
    assert ours[:k, :k].sum() > 5 and ours[:k, :k].trace() < ours[:k, :k].sum(), "matches, some across classes"


def test_confusion_matrix_ignores_crowd_regions_as_coco_does():
    """A detection on a crowd region of its own class (or of unknown class) is not counted; one on a crowd region of
    another class is a false positive; a crowd region nothing covers is not a missed object; a second detection of
    a found object and one below its class's threshold are as COCO counts them."""
    gt = [
        {
            "boxes_xyxy": np.array([[0.0, 0, 10, 10], [50, 50, 60, 60]]),
            "labels": np.array([0, 1]),
            "crowd_boxes_xyxy": np.array([[100.0, 100, 200, 200], [300, 300, 400, 400], [500, 500, 600, 600]]),
            "crowd_labels": np.array([2, -1, 1]),
        }
    ]
    boxes = [
        [0, 0, 10, 10],  # class 1 on the class-0 object: found as the wrong class
        [0, 0, 10, 11],  # class 1 again on it, lower score: a false positive (the object is taken)
        [50, 50, 60, 60],  # class 0 on the class-1 object, below class 0's threshold: not counted -> missed
        [110, 110, 150, 150],  # class 2 inside the class-2 crowd: ignored
        [110, 110, 150, 150],  # class 0 inside the class-2 crowd: a false positive
        [310, 310, 350, 350],  # class 0 inside the crowd of unknown class: ignored
        [700, 700, 720, 720],  # class 1 on nothing: a false positive
    ]
    det = [{"boxes_xyxy": np.array(boxes, dtype=float), "scores": np.array([0.9, 0.8, 0.3, 0.9, 0.9, 0.9, 0.7]),
            "labels": np.array([1, 1, 0, 2, 0, 0, 1])}]  # fmt: skip
    matrix = confusion_matrix(gt, det, [0.5, 0.5, 0.5])
    expected = np.zeros((4, 4), dtype=int)
    expected[1, 0] = 1  # a class-0 object found as class 1
    expected[3, 1] = 1  # the class-1 object missed
    expected[1, 3] = 2  # two false positives of class 1
    expected[0, 3] = 1  # one of class 0
    np.testing.assert_array_equal(matrix, expected)


def test_format_metrics_lists_each_class_counts_at_its_best_f1_score():
    gt, det, _ = _f1_case()
    lines = format_metrics(coco_metrics(gt, det, CLASSES, CATEGORY_IDS, with_pr=True)).splitlines()
    header = next(line for line in lines if line.split()[:2] == ["id", "class"])
    assert header.split()[3:] == ["objects", "found", "as", "other", "missed", "false", "pos.", "from", "score"]
    rows = {line.split()[1]: line.split()[3:] for line in lines if line.split()[:1] in (["3"], ["17"], ["42"])}
    assert rows["cat"] == ["4", "3", "0", "1", "1", "0.60"]  # objects, found, as other, missed, false pos., score
    assert rows["dog"] == ["2", "0", "0", "2", "2", "0.30*"]  # from the default: both dog detections count
    assert rows["bird"] == ["0", "0", "0", "0", "0", "0.30*"]


def test_metric_plots_write_pngs(tmp_path):
    from onedet.train.report import write_metric_plots

    gt, det, _ = _f1_case()
    paths = write_metric_plots(coco_metrics(gt, det, CLASSES, CATEGORY_IDS, with_pr=True), CLASSES, tmp_path)
    assert [p.name for p in paths] == ["pr.png", "f1.png", "confusion_matrix.png"]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_format_metrics_shows_dataset_ids_and_names():
    gt, det = _case()
    text = format_metrics(coco_metrics(gt, det, CLASSES, CATEGORY_IDS))
    assert "AP50" in text and "APl" in text
    assert any(line.split()[:2] == ["42", "bird"] for line in text.splitlines())


class _Out(NamedTuple):
    logits: torch.Tensor
    boxes_xyxy: torch.Tensor


class _OracleModel(torch.nn.Module):
    """Answers each image with the boxes it was told (store pixels), one confident location per box."""

    def __init__(self, boxes_xyxy, labels, num_classes):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.boxes, self.labels, self.num_classes = boxes_xyxy, labels, num_classes
        self.seen = 0

    def forward(self, images):
        assert images.dtype == torch.float32 and float(images.max()) <= 1.0
        b = len(images)
        boxes = self.boxes[self.seen : self.seen + b]
        logits = torch.full((b, boxes.shape[1], self.num_classes), -10.0)
        # Decreasing scores: the padded (invalid) entries rank below every real box, so AP is exactly 1.
        scores = 10.0 - torch.arange(boxes.shape[1], dtype=torch.float32)
        logits.scatter_(2, self.labels[self.seen : self.seen + b, :, None], scores.expand(b, -1)[..., None])
        self.seen += b
        return _Out(logits, boxes)


class _FakeStore:
    """The part of `Store` that evaluate_model reads: three images letterboxed with scales 0.5, 2 and 1."""

    classes = CLASSES
    category_ids = CATEGORY_IDS

    def __init__(self):
        self.scale = torch.tensor([0.5, 2.0, 1.0])
        self.orig_size = torch.tensor([[128, 128], [32, 20], [64, 64]])
        self.boxes = torch.tensor([[[4.0, 4.0, 20.0, 30.0], [30.0, 30.0, 60.0, 50.0]], [[2.0, 2.0, 30.0, 40.0]] * 2,
                                   [[10.0, 10.0, 40.0, 40.0], [0.0, 0.0, 5.0, 5.0]]])  # fmt: skip
        self.labels = torch.tensor([[0, 1], [2, 2], [1, 0]])
        self.valid = torch.tensor([[True, True], [True, False], [True, False]])

    def __len__(self):
        return 3

    def read_batch(self, indices, device=None):
        i = torch.as_tensor(np.asarray(indices))
        return {
            "images": torch.full((len(i), 3, 64, 64), 114, dtype=torch.uint8),
            "boxes_xyxy": self.boxes[i],
            "labels": self.labels[i],
            "valid": self.valid[i],
            "crowd_boxes_xyxy": torch.zeros(len(i), 1, 4),
            "crowd_valid": torch.zeros(len(i), 1, dtype=torch.bool),
            "crowd_labels": torch.full((len(i), 1), -1),
            "orig_size": self.orig_size[i],
            "scale": self.scale[i],
            "image_id": i + 1000,
            "index": i,
        }


def test_evaluate_model_maps_store_boxes_back_to_original_pixels(monkeypatch):
    import onedet.evaluate as evaluate

    store = _FakeStore()
    model = _OracleModel(store.boxes, store.labels, len(CLASSES))
    seen = {}
    real = evaluate.coco_metrics

    def spy(gt, detections, *args, **kwargs):
        seen.update(gt=gt, detections=detections, args=args)
        return real(gt, detections, *args, **kwargs)

    monkeypatch.setattr(evaluate, "coco_metrics", spy)
    metrics = evaluate.evaluate_model(model, store, batch_size=2)
    assert model.seen == 3  # batches of 2 and 1
    np.testing.assert_allclose(seen["gt"][0]["boxes_xyxy"], [[8, 8, 40, 60], [60, 60, 120, 100]])
    np.testing.assert_allclose(seen["gt"][1]["boxes_xyxy"], [[1, 1, 15, 20]])
    # The padded second box of image 1 decodes too; clipped to the original 20 x 32 image.
    assert (seen["detections"][1]["boxes_xyxy"][:, 2] <= 20).all()
    assert seen["args"][2] == [1000, 1001, 1002] and seen["args"][3] == [(128, 128), (32, 20), (64, 64)]
    assert metrics["AP"] == pytest.approx(1.0)  # every box found exactly, in original pixels


def test_unknown_crowd_label_ignores_every_class_and_a_known_one_its_own():
    crowd = np.array([[100.0, 100.0, 300.0, 300.0]] * 2)
    gt = [{"boxes_xyxy": np.array([[0.0, 0.0, 50.0, 50.0]]), "labels": np.array([0]),
           "crowd_boxes_xyxy": crowd, "crowd_labels": np.array([1, 2])}]  # fmt: skip
    det = [{"boxes_xyxy": np.array([[120.0, 120.0, 200.0, 200.0], [0.0, 0.0, 50.0, 50.0]]),
            "scores": np.array([0.9, 0.5]), "labels": np.array([0, 0])}]  # fmt: skip
    # The cat on crowds of dogs and birds is a false positive ranked first: AP50 0.5 (COCO's 101-point: ~0.5).
    assert coco_metrics(gt, det, CLASSES)["AP50"] == pytest.approx(0.5, abs=0.01)
    gt[0]["crowd_labels"] = np.array([1, -1])  # the second crowd's class unknown: ignored for cats too
    assert coco_metrics(gt, det, CLASSES)["AP50"] == pytest.approx(1.0)


class _FixedModel(torch.nn.Module):
    """Answers store image i with the detections it was given (store pixels): one location per detection, its
    logit set so that the decoded score is the given one; every other (location, class) far below."""

    def __init__(self, boxes_xyxy, labels, scores, num_classes):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.boxes, self.labels, self.num_classes = boxes_xyxy, labels, num_classes
        self.logits = torch.logit(torch.as_tensor(scores, dtype=torch.float32))
        self.seen = 0

    def forward(self, images):
        b, s = len(images), slice(self.seen, self.seen + len(images))
        logits = torch.full((b, self.boxes.shape[1], self.num_classes), -30.0)
        logits.scatter_(2, self.labels[s, :, None], self.logits[s, :, None])
        self.seen += b
        return _Out(logits, self.boxes[s])


def test_crowd_ignored_for_its_own_class_only_through_the_store_equals_pycocotools(tmp_path):
    """COCO JSON -> prepare -> Store -> evaluate_model against pycocotools on the JSON itself: a detection of the
    crowd's own class inside it is ignored, one of another class there is a false positive."""
    import json

    from PIL import Image

    from onedet.data.formats.coco import read_coco_file
    from onedet.data.prepare import prepare
    from onedet.data.store import Store
    from onedet.evaluate import evaluate_model

    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    cat, dog = 3, 17  # dataset ids; labels 0, 1
    images = [{"id": 11, "file_name": "a.png", "width": 200, "height": 160},
              {"id": 12, "file_name": "b.png", "width": 120, "height": 100}]  # fmt: skip
    anns = [  # xywh
        {"image_id": 11, "category_id": cat, "bbox": [10, 10, 40, 40], "iscrowd": 0},
        {"image_id": 11, "category_id": dog, "bbox": [100, 60, 80, 80], "iscrowd": 1},
        {"image_id": 12, "category_id": dog, "bbox": [20, 20, 50, 40], "iscrowd": 0},
        {"image_id": 12, "category_id": cat, "bbox": [60, 50, 50, 40], "iscrowd": 1},
    ]
    for i, a in enumerate(anns):
        a.update(id=i + 1, area=a["bbox"][2] * a["bbox"][3])
    categories = [{"id": cat, "name": "cat"}, {"id": dog, "name": "dog"}]
    (tmp_path / "data" / "annotations").mkdir(parents=True)
    (tmp_path / "data" / "val2017").mkdir()
    json_path = tmp_path / "data" / "annotations" / "instances_val2017.json"
    json_path.write_text(json.dumps({"images": images, "annotations": anns, "categories": categories}))
    for im in images:
        Image.new("RGB", (im["width"], im["height"]), (90, 120, 150)).save(
            tmp_path / "data" / "val2017" / im["file_name"]
        )
    # (image id, xyxy original pixels, category, score): three per image
    wanted = [
        (11, [10, 10, 50, 50], cat, 0.5),  # true positive
        (11, [110, 70, 150, 110], cat, 0.9),  # a cat inside the crowd of dogs: a false positive
        (11, [120, 80, 160, 120], dog, 0.8),  # a dog inside the crowd of dogs: ignored
        (12, [20, 20, 70, 60], dog, 0.7),  # true positive
        (12, [65, 55, 100, 85], cat, 0.95),  # a cat inside the crowd of cats: ignored
        (12, [70, 60, 105, 88], dog, 0.85),  # a dog inside the crowd of cats: a false positive
    ]

    # The reader of one file (a lone split given as a folder would lose an image to a held-out val).
    prepare([read_coco_file(json_path)], tmp_path / "store", image_size=64, workers=1, progress=False)
    store = Store(tmp_path / "store" / "val")
    batch = store.read_batch(np.arange(len(store)))
    assert batch["image_id"].tolist() == [11, 12] and batch["crowd_labels"][:, 0].tolist() == [1, 0]
    label_of = {cat: 0, dog: 1}
    scale = batch["scale"].double()
    boxes = torch.tensor([[w[1] for w in wanted if w[0] == i] for i in (11, 12)], dtype=torch.float64)
    boxes = (boxes * scale[:, None, None]).float()
    labels = torch.tensor([[label_of[w[2]] for w in wanted if w[0] == i] for i in (11, 12)])
    scores = torch.tensor([[w[3] for w in wanted if w[0] == i] for i in (11, 12)])

    def ours(s):
        return evaluate_model(_FixedModel(boxes, labels, scores, 2), s, batch_size=1, k=3)

    metrics = ours(store)
    coco_gt = COCO(str(json_path))
    results = [{"image_id": i, "category_id": c, "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "score": p}
               for i, b, c, p in wanted]  # fmt: skip
    ref = COCOeval(coco_gt, coco_gt.loadRes(results), "bbox")
    ref.evaluate()
    ref.accumulate()
    ref.summarize()
    for i, name in enumerate(["AP", "AP50", "AP75", "APs", "APm", "APl"]):
        assert metrics[name] == pytest.approx(ref.stats[i], abs=1e-6), name
    for k, name in enumerate(["cat", "dog"]):
        p = ref.eval["precision"][:, :, k, 0, -1]
        assert metrics["per_class"][name] == pytest.approx(p[p > -1].mean(), abs=1e-6), name
    # One false positive ranked above each class's true positive: not 1, as it would be if every crowd region
    # were ignored for every class.
    assert metrics["per_class"] == pytest.approx({"cat": 0.5, "dog": 0.5}, abs=0.01)

    # A store written before crowd labels existed: its crowd regions are ignored for every class, as then.
    td_meta = json.loads((store.path / "td" / "meta.json").read_text())
    del td_meta["crowd_labels"]
    (store.path / "td" / "meta.json").write_text(json.dumps(td_meta))
    (store.path / "td" / "crowd_labels.memmap").unlink()
    assert ours(Store(store.path))["per_class"] == pytest.approx({"cat": 1.0, "dog": 1.0})
