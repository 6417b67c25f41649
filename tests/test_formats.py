"""Format readers: exact boxes, labels and splits from hand-made COCO / YOLO / VOC datasets; bad input; real data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from onedet.data.formats import detect_format, hold_out_val, read_dataset
from onedet.data.records import SourceDataset, SourceImage
from onedet.errors import OnedetError


def _image(path: Path, w: int, h: int, orientation: int = 1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    Image.new("RGB", (w, h), (90, 120, 150)).save(path, exif=exif.tobytes())
    return path


def _by_split(splits: list[SourceDataset]) -> dict[str, SourceDataset]:
    return {s.name: s for s in splits}


def _counts(ds: SourceDataset) -> dict[str, int]:
    return {k: v["count"] for k, v in ds.report.to_json().items()}


# --- COCO -------------------------------------------------------------------------------------------------------


def _coco(root: Path, split: str, images: list[dict], anns: list[dict], cat_ids=(1, 3, 7, 90)) -> Path:
    """instances_<split>2017.json under annotations/, images in <split>2017/."""
    for im in images:
        _image(root / f"{split}2017" / im["file_name"], im["width"], im["height"])
    cats = [{"id": c, "name": f"c{c}"} for c in reversed(cat_ids)]  # unsorted on purpose
    for i, a in enumerate(anns):
        a.setdefault("id", i + 1)
        a.setdefault("iscrowd", 0)
    path = root / "annotations" / f"instances_{split}2017.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def _coco_dataset(root: Path) -> None:
    _coco(
        root,
        "train",
        [
            {"id": 42, "file_name": "a.jpg", "width": 64, "height": 48},
            {"id": 7, "file_name": "b.jpg", "width": 40, "height": 30},
            {"id": 9, "file_name": "c.jpg", "width": 20, "height": 20},  # no annotations: background
        ],
        [
            {"image_id": 42, "category_id": 90, "bbox": [1.5, 2.0, 10.0, 20.0]},
            {"image_id": 42, "category_id": 1, "bbox": [50.0, 40.0, 30.0, 30.0]},  # clipped to 64x48
            {"image_id": 42, "category_id": 3, "bbox": [5.0, 5.0, 0.0, 4.0]},  # zero area: dropped
            {"image_id": 7, "category_id": 7, "bbox": [0.0, 0.0, 40.0, 30.0]},
            {"image_id": 7, "category_id": 1, "bbox": [3.0, 4.0, 5.0, 6.0], "iscrowd": 1},
        ],
    )
    _coco(root, "val", [{"id": 1, "file_name": "d.jpg", "width": 32, "height": 32}], [])


def test_coco_exact_boxes_ids_and_crowd(tmp_path: Path) -> None:
    _coco_dataset(tmp_path)
    assert detect_format(tmp_path) == "coco"
    splits = _by_split(read_dataset(tmp_path))
    assert list(splits) == ["train", "val"]
    train = splits["train"]
    # Contiguous labels in sorted id order; unused categories (3) kept.
    assert train.category_ids == [1, 3, 7, 90] and train.classes == ["c1", "c3", "c7", "c90"]
    a, b, c = train.images
    assert [im.image_id for im in train.images] == [42, 7, 9]
    assert a.path == tmp_path / "train2017" / "a.jpg" and a.size_hw == (48, 64)
    np.testing.assert_allclose(a.boxes_xyxy, [[1.5, 2.0, 11.5, 22.0], [50.0, 40.0, 64.0, 48.0]])
    assert a.labels.tolist() == [3, 0] and len(a.crowd_boxes_xyxy) == 0
    np.testing.assert_allclose(b.boxes_xyxy, [[0, 0, 40, 30]])
    assert b.labels.tolist() == [2]
    np.testing.assert_allclose(b.crowd_boxes_xyxy, [[3, 4, 8, 10]])  # not among the training boxes
    assert b.crowd_labels.tolist() == [0] and b.crowd_labels.dtype == np.int64  # category 1 -> label 0
    assert a.crowd_labels.shape == (0,) and c.crowd_labels.shape == (0,)
    assert c.boxes_xyxy.shape == (0, 4) and not a.normalized
    assert _counts(train) == {"background_images": 1, "clipped_boxes": 1, "zero_area_boxes": 1}
    assert _counts(splits["val"]) == {"background_images": 1}


def test_coco_crowd_labels_follow_their_boxes(tmp_path: Path) -> None:
    """Crowd labels stay aligned with crowd boxes through clipping and dropping; an undeclared category's crowd
    is dropped and counted (COCOeval evaluates declared categories only, so it would ignore nothing)."""
    images = [{"id": 1, "file_name": "a.jpg", "width": 40, "height": 30}]
    anns = [
        {"image_id": 1, "category_id": 7, "bbox": [50.0, 1.0, 5.0, 5.0], "iscrowd": 1},  # outside: dropped
        {"image_id": 1, "category_id": 3, "bbox": [1.0, 1.0, 5.0, 5.0], "iscrowd": 1},
        {"image_id": 1, "category_id": 99, "bbox": [2.0, 2.0, 5.0, 5.0], "iscrowd": 1},  # undeclared category
        {"image_id": 1, "category_id": 3, "bbox": [0.0, 0.0, 10.0, 10.0]},
        {"image_id": 1, "category_id": 7, "bbox": [30.0, 20.0, 20.0, 20.0], "iscrowd": 1},  # clipped
    ]
    _coco(tmp_path, "train", images, anns, cat_ids=(3, 7))
    (im,) = read_dataset(tmp_path)[0].images
    np.testing.assert_allclose(im.crowd_boxes_xyxy, [[1, 1, 6, 6], [30, 20, 40, 30]])
    assert im.crowd_labels.tolist() == [0, 1]  # categories [3, 7] -> labels [0, 1], in file order
    assert _counts(read_dataset(tmp_path)[0]) == {
        "crowd_clipped_boxes": 1, "crowd_unknown_category": 1, "crowd_zero_area_boxes": 1}  # fmt: skip


def test_coco_bad_inputs(tmp_path: Path) -> None:
    path = _coco(tmp_path / "x", "train", [{"id": 1, "file_name": "a.jpg", "width": 8, "height": 8}],
                 [{"image_id": 1, "category_id": 5, "bbox": [0, 0, 2, 2], "id": 77}])  # fmt: skip
    with pytest.raises(OnedetError, match=r"instances_train2017\.json.*annotation id 77.*category_id 5"):
        read_dataset(path)
    path = _coco(tmp_path / "z", "train", [{"id": 1, "file_name": "a.jpg", "width": 8, "height": 8}],
                 [{"image_id": 1, "category_id": 1, "bbox": [0, None, 2, 2]}])  # fmt: skip
    with pytest.raises(OnedetError, match=r"instances_train2017\.json: a bbox of image 1 is not four finite numbers"):
        read_dataset(path)
    path = _coco(tmp_path / "y", "train", [{"id": 1, "file_name": "gone.jpg", "width": 8, "height": 8}], [])
    (tmp_path / "y" / "train2017" / "gone.jpg").unlink()
    with pytest.raises(OnedetError, match="cannot find its images"):
        read_dataset(path)


def test_coco_roboflow_layout_splits_from_folders(tmp_path: Path) -> None:
    for folder in ("train", "valid", "test"):
        _image(tmp_path / folder / f"{folder}.jpg", 16, 12)
        anns = [{"id": 1, "image_id": 0, "category_id": 1, "bbox": [1, 2, 3, 4], "iscrowd": 0}]
        data = {"images": [{"id": 0, "file_name": f"{folder}.jpg", "width": 16, "height": 12}], "annotations": anns,
                "categories": [{"id": 0, "name": "things"}, {"id": 1, "name": "fish"}]}  # fmt: skip
        (tmp_path / folder / "_annotations.coco.json").write_text(json.dumps(data))
    splits = _by_split(read_dataset(tmp_path))
    assert list(splits) == ["train", "val", "test"]
    (im,) = splits["val"].images
    assert im.path == tmp_path / "valid" / "valid.jpg" and im.labels.tolist() == [1]
    np.testing.assert_allclose(im.boxes_xyxy, [[1, 2, 4, 6]])


# --- YOLO -------------------------------------------------------------------------------------------------------


def _yolo_line(label: int, box_xyxy, w: int, h: int) -> str:
    x0, y0, x1, y1 = box_xyxy
    return f"{label} {(x0 + x1) / 2 / w:.10f} {(y0 + y1) / 2 / h:.10f} {(x1 - x0) / w:.10f} {(y1 - y0) / h:.10f}"


def test_yolo_roboflow_layout_and_counts(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    (root / "data.yaml").parent.mkdir(parents=True)
    # Roboflow's paths are relative to a parent folder: they do not resolve from the yaml's own folder.
    (root / "data.yaml").write_text("train: ../train/images\nval: ../valid/images\nnc: 2\nnames: {0: cat, 1: dog}\n")
    _image(root / "train/images/a.jpg", 50, 40)
    (root / "train/labels").mkdir(parents=True)
    (root / "train/labels/a.txt").write_text(
        _yolo_line(1, (5, 4, 25, 24), 50, 40) + "\n\n0 0.9 0.5 0.4 0.2\n1 0.5 0.5 0 0.1\n"  # clipped, zero area
    )
    _image(root / "train/images/empty.jpg", 10, 10)
    (root / "train/labels/empty.txt").write_text("")
    _image(root / "train/images/nolabel.png", 10, 10)
    (root / "train/labels/orphan.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    _image(root / "valid/images/v.jpg", 20, 30, orientation=6)  # displayed as 30 wide, 20 high
    (root / "valid/labels").mkdir(parents=True)
    (root / "valid/labels/v.txt").write_text("0 0.5 0.5 1 1\n0 0.1 0.1 0.2 0.2 0.3 0.1\n")  # box; polygon
    _image(root / "test/images/t.jpg", 10, 10)  # a split the yaml does not list
    (root / "test/labels").mkdir(parents=True)

    assert detect_format(root) == "yolo"
    splits = _by_split(read_dataset(root))
    assert list(splits) == ["train", "val", "test"]
    train, val = splits["train"], splits["val"]
    assert train.classes == ["cat", "dog"] and train.category_ids == [0, 1]
    a = next(im for im in train.images if im.path.name == "a.jpg")
    np.testing.assert_allclose(a.boxes_xyxy, [[5, 4, 25, 24], [35, 16, 50, 24]], atol=1e-4)
    assert a.labels.tolist() == [1, 0] and a.size_hw == (40, 50) and not a.normalized
    assert _counts(train) == {
        "background_images": 2,
        "clipped_boxes": 1,
        "empty_label_files": 1,
        "images_without_labels": 1,
        "labels_without_image": 1,
        "zero_area_boxes": 1,
    }
    (v,) = val.images
    assert v.size_hw == (20, 30)  # EXIF orientation 6 swaps the sides
    np.testing.assert_allclose(v.boxes_xyxy, [[0, 0, 30, 20], [3, 2, 9, 4]], atol=1e-4)
    assert _counts(splits["test"]) == {"background_images": 1, "images_without_labels": 1}


def test_yolo_ultralytics_layout_without_yaml_holds_out_val(tmp_path: Path) -> None:
    for i in range(10):
        _image(tmp_path / f"images/train/{i}.jpg", 16, 16)
        (tmp_path / "labels/train").mkdir(parents=True, exist_ok=True)
        (tmp_path / f"labels/train/{i}.txt").write_text(f"{i % 3} 0.5 0.5 0.5 0.5\n")
    splits = _by_split(read_dataset(tmp_path))
    assert list(splits) == ["train", "val"] and len(splits["train"].images) == 9 and len(splits["val"].images) == 1
    assert splits["train"].classes == ["class0", "class1", "class2"]
    report = splits["val"].report.to_json()["held_out_val"]
    assert report["count"] == 1 and report["note"] == "held out 1 images of train as val"


def test_held_out_images_take_their_report_entries_with_them(tmp_path: Path) -> None:
    # images 0-5 have empty label files (reported twice: the .txt, and the image as a background image)
    for i in range(12):
        _image(tmp_path / f"images/train/{i}.jpg", 16, 16)
        (tmp_path / "labels/train").mkdir(parents=True, exist_ok=True)
        (tmp_path / f"labels/train/{i}.txt").write_text("" if i < 6 else "0 0.5 0.5 0.5 0.5\n")
    (tmp_path / "labels/train/orphan.txt").write_text("0 0.5 0.5 0.5 0.5\n")  # a dataset-level entry
    splits = _by_split(read_dataset(tmp_path, holdout_fraction=0.5))
    train, val = splits["train"], splits["val"]

    def files(ds: SourceDataset, kind: str) -> set[str]:
        return {Path(f).name for f in ds.report.to_json().get(kind, {}).get("files", [])}

    for ds in (train, val):
        empty = {f"{im.path.stem}.txt" for im in ds.images if int(im.path.stem) < 6}
        assert files(ds, "empty_label_files") == empty and files(ds, "background_images") == {
            f"{Path(f).stem}.jpg" for f in empty
        }
    assert files(val, "empty_label_files") and files(train, "empty_label_files")  # the seed splits them
    assert files(train, "labels_without_image") == {"orphan.txt"} and "labels_without_image" not in val.report.items
    assert _counts(val)["held_out_val"] == len(val.images) == 6


def test_yolo_bad_lines_name_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "data.yaml").write_text("train: train/images\nnames: [a, b]\n")
    _image(tmp_path / "train/images/a.jpg", 8, 8)
    (tmp_path / "train/labels").mkdir(parents=True)
    for text, match in [
        ("0 0.5 0.5 0.1 0.1\n2 0.5 0.5 0.1 0.1\n", r"a\.txt:2: class id 2 out of range \(expected 0\.\.1\)"),
        ("0 0.5 0.5 0.1\n", r"a\.txt:1: expected 'class cx cy w h'"),
        ("0 0.5 zero 0.1 0.1\n", r"a\.txt:1: not numbers"),
    ]:
        (tmp_path / "train/labels/a.txt").write_text(text)
        with pytest.raises(OnedetError, match=match):
            read_dataset(tmp_path)


def test_coco_and_yolo_give_the_same_boxes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    sizes = [(64, 48), (40, 72), (100, 30)]  # (w, h)
    images, anns, yolo = [], [], tmp_path / "yolo"
    for i, (w, h) in enumerate(sizes):
        images.append({"id": i, "file_name": f"{i}.jpg", "width": w, "height": h})
        lines = []
        for _ in range(4):
            x0, y0 = rng.uniform(0, w - 5), rng.uniform(0, h - 5)
            x1, y1 = rng.uniform(x0 + 1, w), rng.uniform(y0 + 1, h)
            label = int(rng.integers(0, 3))
            anns.append({"image_id": i, "category_id": label, "bbox": [x0, y0, x1 - x0, y1 - y0]})
            lines.append(_yolo_line(label, (x0, y0, x1, y1), w, h))
        _image(yolo / f"images/train/{i}.jpg", w, h)
        (yolo / "labels/train").mkdir(parents=True, exist_ok=True)
        (yolo / f"labels/train/{i}.txt").write_text("\n".join(lines))
    _coco(tmp_path / "coco", "train", images, anns, cat_ids=(0, 1, 2))
    (yolo / "data.yaml").write_text("train: images/train\nval: images/train\nnames: [c0, c1, c2]\n")
    coco = _by_split(read_dataset(tmp_path / "coco" / "annotations" / "instances_train2017.json", holdout_fraction=0.0))
    ylo = _by_split(read_dataset(yolo))
    assert list(coco) == ["train"]  # holdout_fraction=0: no held-out split
    for c_im, y_im in zip(coco["train"].images, ylo["train"].images, strict=True):
        assert c_im.path.name == y_im.path.name
        np.testing.assert_allclose(c_im.boxes_xyxy, y_im.boxes_xyxy, atol=1e-3)
        assert c_im.labels.tolist() == y_im.labels.tolist()


# --- VOC --------------------------------------------------------------------------------------------------------


def _voc_xml(name: str, w: int, h: int, objects: list[tuple]) -> str:
    objs = "".join(
        f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
        f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for n, x0, y0, x1, y1, d in objects
    )
    size = f"<size><width>{w}</width><height>{h}</height></size>"
    return f"<annotation><filename>{name}.jpg</filename>{size}{objs}</annotation>"


def _voc(root: Path, items: dict[str, list[tuple]], sets: dict[str, list[str]], missing_image: str = "") -> None:
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets/Main").mkdir(parents=True)
    for name, objects in items.items():
        (root / f"Annotations/{name}.xml").write_text(_voc_xml(name, 40, 30, objects))
        if name != missing_image:
            _image(root / f"JPEGImages/{name}.jpg", 40, 30)
    for split, names in sets.items():
        (root / f"ImageSets/Main/{split}.txt").write_text("\n".join(names) + "\n")
    (root / "ImageSets/Main/dog_train.txt").write_text("a  1\n")  # per-class list: not a split


def test_voc_splits_coordinates_and_fixes(tmp_path: Path) -> None:
    items = {
        "a": [("dog", 1, 1, 10, 20, 0), ("cat", 30, 5, 45, 12, 0), ("cat", 7, 7, 7, 9, 0), ("dog", 2, 2, 5, 5, 1)],
        "b": [("bird", 1, 1, 40, 30, 0)],
        "c": [],
        "d": [("cat", 1, 1, 2, 2, 0)],
    }
    _voc(tmp_path / "VOCdevkit" / "VOC2007", items, {"train": ["a", "c"], "val": ["b", "d"], "trainval": list("abcd"),
                                                      "test": ["b"]}, missing_image="d")  # fmt: skip
    assert detect_format(tmp_path) == "voc"
    splits = _by_split(read_dataset(tmp_path))
    assert list(splits) == ["train", "val", "test"]  # trainval is the union, not a split
    train, val = splits["train"], splits["val"]
    assert train.classes == ["bird", "cat", "dog"] and train.category_ids == [0, 1, 2]
    a, c = train.images
    # 1-based inclusive -> continuous: x0 = xmin - 1, x1 = xmax; (30..45) clipped to the 40 px width.
    np.testing.assert_allclose(a.boxes_xyxy, [[0, 0, 10, 20], [29, 4, 40, 12]])
    assert a.labels.tolist() == [2, 1] and a.size_hw == (30, 40)
    np.testing.assert_allclose(a.crowd_boxes_xyxy, [[1, 1, 5, 5]])  # difficult: an ignore region
    assert a.crowd_labels.tolist() == [2] and c.crowd_labels.shape == (0,)  # of its own class (dog)
    assert len(c.boxes_xyxy) == 0
    assert _counts(train) == {"background_images": 1, "clipped_boxes": 1, "difficult_as_ignore": 1,
                              "zero_area_boxes": 1}  # fmt: skip
    assert [im.path.name for im in val.images] == ["b.jpg"] and _counts(val) == {"missing_images": 1}


def test_voc_trainval_only_becomes_train_with_held_out_val(tmp_path: Path) -> None:
    names = [f"i{k}" for k in range(20)]
    _voc(tmp_path, {n: [("x", 1, 1, 5, 5, 0)] for n in names}, {"trainval": names})
    first, second = read_dataset(tmp_path), read_dataset(tmp_path)
    assert [s.name for s in first] == ["train", "val"]
    assert [len(s.images) for s in first] == [18, 2]
    assert [im.path for im in first[1].images] == [im.path for im in second[1].images]  # deterministic
    assert {im.path for im in first[0].images}.isdisjoint(im.path for im in first[1].images)


def test_voc_bad_xml_names_the_file(tmp_path: Path) -> None:
    _voc(tmp_path, {"a": [("x", 1, 1, 5, 5, 0)]}, {"train": ["a"], "val": ["a"]})
    (tmp_path / "Annotations/a.xml").write_text("<annotation><object><name>x</name><bndbox><xmin>1</xmin>")
    with pytest.raises(OnedetError, match=r"a\.xml"):
        read_dataset(tmp_path)


# --- detection and hold-out -------------------------------------------------------------------------------------


def test_unrecognised_or_missing_layout_says_what_was_expected(tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "x.txt").write_text("hello")
    (tmp_path / "other").mkdir()
    with pytest.raises(OnedetError, match=r"COCO.*YOLO.*VOC"):
        detect_format(tmp_path)
    with pytest.raises(OnedetError, match="not found"):
        read_dataset(tmp_path / "nope")
    with pytest.raises(OnedetError, match="no YOLO splits found"):
        read_dataset(tmp_path, format="yolo")
    with pytest.raises(OnedetError, match="not a Pascal VOC folder"):
        read_dataset(tmp_path, format="voc")
    (tmp_path / "Annotations").mkdir()
    with pytest.raises(OnedetError, match="has Annotations/ but no JPEGImages/"):
        read_dataset(tmp_path)


def test_hold_out_val_is_deterministic_by_seed() -> None:
    images = [SourceImage(Path(f"{i}.jpg"), np.zeros((0, 4), np.float32), np.zeros(0, np.int64)) for i in range(50)]
    ds = SourceDataset("train", "yolo", ["a"], [0], images)
    runs = [[im.path for im in hold_out_val(ds, 0.1, seed)[1].images] for seed in (0, 0, 1)]
    assert runs[0] == runs[1] != runs[2] and len(runs[0]) == 5
    assert runs[0] == sorted(runs[0], key=lambda p: int(p.stem))  # source order kept


# --- real data (skipped when ../shared/data is absent) ----------------------------------------------------------


def test_real_bccd(shared_data: Path) -> None:
    splits = _by_split(read_dataset(shared_data / "bccd"))
    assert list(splits) == ["train", "val", "test"]
    assert splits["train"].classes == ["Platelets", "RBC", "WBC"]
    assert [len(s.images) for s in splits.values()] == [205, 87, 72]
    assert sum(_counts(s).get("zero_area_boxes", 0) for s in splits.values()) == 2
    for s in splits.values():
        for im in s.images:
            assert (im.boxes_xyxy[:, 2:] <= [640, 480]).all() and (im.boxes_xyxy[:, :2] >= 0).all()


def test_real_aquarium(shared_data: Path) -> None:
    splits = _by_split(read_dataset(shared_data / "aquarium" / "aquarium_pretrain"))
    assert list(splits) == ["train", "val", "test"]
    assert len(splits["train"].classes) == 7 and splits["train"].classes[0] == "fish"
    assert [len(s.images) for s in splits.values()] == [448, 127, 63]
    assert _counts(splits["train"])["empty_label_files"] == 1
    assert _counts(splits["test"])["zero_area_boxes"] == 2


def test_real_coco128(shared_data: Path) -> None:
    splits = _by_split(read_dataset(shared_data / "coco128_coco"))
    train = splits["train"]
    assert len(train.classes) == 80 and max(train.category_ids) == 90 and len(train.images) == 128
    assert sum(len(im.crowd_boxes_xyxy) for im in train.images) > 0
    # Crowd labels are the JSON's crowd categories, image by image, in file order.
    data = json.loads((shared_data / "coco128_coco" / "annotations" / "instances_train2017.json").read_text())
    expected: dict[int, list[int]] = {}
    for ann in data["annotations"]:
        if ann.get("iscrowd"):
            expected.setdefault(ann["image_id"], []).append(ann["category_id"])
    got = {im.image_id: [train.category_ids[k] for k in im.crowd_labels] for im in train.images if len(im.crowd_labels)}
    assert got == expected and all(len(im.crowd_labels) == len(im.crowd_boxes_xyxy) for im in train.images)
    assert _counts(train)["background_images"] == 2
    assert {im.image_id for im in train.images} >= {9, 25}
