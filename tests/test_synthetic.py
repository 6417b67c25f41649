"""The synthetic shapes dataset: deterministic by seed, exact boxes, parseable on-disk formats."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from onedet.data.synthetic import CLASSES, PLAIN_BACKGROUND, make_synthetic, render_synthetic
from onedet.errors import OnedetError


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_render_is_deterministic_and_per_image():
    a_img, a_t = render_synthetic(6, 96, seed=3)
    b_img, b_t = render_synthetic(6, 96, seed=3)
    np.testing.assert_array_equal(a_img, b_img)
    for (ab, al), (bb, bl) in zip(a_t, b_t):
        np.testing.assert_array_equal(ab, bb)
        np.testing.assert_array_equal(al, bl)
    # image i depends only on (seed, i): a longer render starts with the same images
    c_img, _ = render_synthetic(8, 96, seed=3)
    np.testing.assert_array_equal(a_img, c_img[:6])
    d_img, _ = render_synthetic(6, 96, seed=4)
    assert not np.array_equal(a_img, d_img)


def test_boxes_are_the_exact_visible_extent():
    images, targets = render_synthetic(30, 128, seed=0, plain=True)
    num_boxes = 0
    for img, (boxes, labels) in zip(images, targets):
        assert 1 <= len(boxes) <= 6
        assert labels.min() >= 0 and labels.max() < len(CLASSES)
        fg = np.any(img != np.array(PLAIN_BACKGROUND, np.uint8), axis=-1)
        covered = np.zeros_like(fg)
        for x0, y0, x1, y1 in boxes.astype(int):
            assert 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 128
            # objects are not tiny: at least ~10% of the side in their larger dimension (minus occlusion)
            assert max(x1 - x0, y1 - y0) >= 6
            covered[y0:y1, x0:x1] = True
            # tight: every edge row/column of the box holds a shape pixel
            patch = fg[y0:y1, x0:x1]
            assert patch[0].any() and patch[-1].any() and patch[:, 0].any() and patch[:, -1].any()
            num_boxes += 1
        # nothing drawn outside the boxes
        assert not (fg & ~covered).any()
    assert num_boxes > 60


def test_single_shape_pixels_match_box():
    images, targets = render_synthetic(40, 64, seed=1, plain=True)
    singles = [(img, t) for img, t in zip(images, targets) if len(t[0]) == 1]
    assert singles
    for img, (boxes, _) in singles:
        ys, xs = np.nonzero(np.any(img != np.array(PLAIN_BACKGROUND, np.uint8), axis=-1))
        np.testing.assert_array_equal(boxes[0], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])


def test_make_synthetic_coco_is_deterministic_and_parseable(tmp_path):
    a = make_synthetic(tmp_path / "a", num_images=10, image_size=64, seed=7)
    b = make_synthetic(tmp_path / "b", num_images=10, image_size=64, seed=7)
    assert _files(a) == _files(b)
    c = make_synthetic(tmp_path / "c", num_images=10, image_size=64, seed=8)
    assert _files(a) != _files(c)

    from pycocotools.coco import COCO

    images, targets = render_synthetic(10, 64, seed=7)
    seen = set()
    for split, expected in (("train", 8), ("val", 2)):
        coco = COCO(str(a / "annotations" / f"instances_{split}.json"))
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CLASSES)
        assert len(coco.getImgIds()) == expected
        for info in coco.loadImgs(coco.getImgIds()):
            index = int(Path(info["file_name"]).stem)
            seen.add(index)
            pixels = np.asarray(Image.open(a / split / info["file_name"]).convert("RGB"))
            np.testing.assert_array_equal(pixels, images[index])  # PNG: lossless
            anns = coco.loadAnns(coco.getAnnIds(imgIds=[info["id"]]))
            xywh = np.array([ann["bbox"] for ann in anns], np.float32).reshape(-1, 4)
            boxes, labels = targets[index]
            np.testing.assert_array_equal(np.c_[xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], boxes)
            np.testing.assert_array_equal([ann["category_id"] - 1 for ann in anns], labels)
    assert seen == set(range(10))  # the splits are disjoint and cover everything


def test_make_synthetic_yolo_and_voc(tmp_path):
    _, targets = render_synthetic(5, 80, seed=2)
    yolo = make_synthetic(tmp_path / "yolo", num_images=5, image_size=80, seed=2, format="yolo", val_fraction=0.4)
    assert "names:" in (yolo / "data.yaml").read_text()
    label_files = sorted((yolo / "train" / "labels").glob("*.txt")) + sorted((yolo / "valid" / "labels").glob("*.txt"))
    assert len(label_files) == 5
    for path in label_files:
        rows = np.loadtxt(path, ndmin=2)
        boxes, labels = targets[int(path.stem)]
        cx, cy, w, h = (rows[:, 1:] * 80).T
        np.testing.assert_allclose(np.c_[cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], boxes, atol=1e-4)
        np.testing.assert_array_equal(rows[:, 0], labels)
    voc = make_synthetic(tmp_path / "voc", num_images=5, image_size=80, seed=2, format="voc", val_fraction=0.4)
    ids = (voc / "ImageSets/Main/train.txt").read_text().split() + (voc / "ImageSets/Main/val.txt").read_text().split()
    assert sorted(ids) == [f"{i:06d}" for i in range(5)]
    assert len(list((voc / "Annotations").glob("*.xml"))) == 5
    with pytest.raises(OnedetError, match="format"):
        make_synthetic(tmp_path / "x", num_images=2, format="tfrecord")


def test_coco_json_is_plain_json(tmp_path):
    out = make_synthetic(tmp_path / "d", num_images=3, image_size=48, seed=0, val_fraction=0.0)
    doc = json.loads((out / "annotations" / "instances_train.json").read_text())
    assert len(doc["images"]) == 3 and not (out / "annotations" / "instances_val.json").exists()
