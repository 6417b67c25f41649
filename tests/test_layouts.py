"""Datasets as users have them: VOC exports under other folder names, Ultralytics' symlinked YOLO layout, loops."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from onedet.data.formats import detect_format, read_dataset
from onedet.data.formats.common import REPEATED_FOLDERS, list_images
from onedet.data.records import Report, SourceDataset
from onedet.errors import OnedetError


def _image(path: Path, w: int = 40, h: int = 30, colour: tuple[int, int, int] = (90, 120, 150)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), colour).save(path)
    return path


def _counts(ds: SourceDataset) -> dict[str, int]:
    return {k: v["count"] for k, v in ds.report.to_json().items()}


def _all_images(splits: list[SourceDataset]) -> dict[str, object]:
    return {im.path.name: im for s in splits for im in s.images}


# --- Pascal VOC under other folder names ------------------------------------------------------------------------


def _xml(filename: str | None, path: str | None, box: tuple[int, int, int, int], name: str = "dog") -> str:
    tags = (f"<filename>{filename}</filename>" if filename else "") + (f"<path>{path}</path>" if path else "")
    x0, y0, x1, y1 = box
    obj = f"<object><name>{name}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax>"
    return f'<?xml version="1.0"?>\n<annotation><folder>x</folder>{tags}<size><width>40</width><height>30</height>'\
           f"</size>{obj}</bndbox></object></annotation>"  # fmt: skip


def _voc_export(root: Path, xml_dir: str, image_dir: str) -> None:
    """Ten images; a.xml names its image by <filename>, b.xml only by a foreign <path>, c.xml by neither (its
    stem finds it), d.xml by a Windows <path> while its <filename> is stale; e's image is missing."""
    (root / xml_dir).mkdir(parents=True)
    for k in range(10):
        _image(root / image_dir / f"i{k}.jpg")
        (root / xml_dir / f"i{k}.xml").write_text(_xml(f"i{k}.jpg", None, (1, 1, 10, 10)))
    _image(root / image_dir / "a.jpg")
    _image(root / image_dir / "b.png")
    _image(root / image_dir / "c.jpg")
    _image(root / image_dir / "photo_d.jpg")
    (root / xml_dir / "a.xml").write_text(_xml("a.jpg", "/home/alice/labelImg/a.jpg", (1, 1, 20, 10), "cat"))
    (root / xml_dir / "b.xml").write_text(_xml(None, "/home/alice/Pictures/b.png", (3, 4, 20, 30)))
    (root / xml_dir / "c.xml").write_text(_xml(None, None, (1, 1, 5, 5)))
    (root / xml_dir / "d.xml").write_text(_xml("IMG_0001.jpg", r"C:\Users\bob\Desktop\photo_d.jpg", (2, 2, 8, 8)))
    (root / xml_dir / "e.xml").write_text(_xml("e.jpg", None, (1, 1, 5, 5)))


@pytest.mark.parametrize("xml_dir, image_dir", [("annotations", "images"), ("annots", "images"), ("xml", "imgs")])
def test_voc_export_folders_found_by_content(tmp_path: Path, xml_dir: str, image_dir: str) -> None:
    _voc_export(tmp_path, xml_dir, image_dir)
    assert detect_format(tmp_path) == "voc"
    splits = read_dataset(tmp_path)
    assert [s.name for s in splits] == ["train", "val"]  # no split files: a val split held out
    train, val = splits
    assert len(train.images) + len(val.images) == 14  # e's image is missing
    assert "no_split_files" in train.report.to_json() and "held_out_val" in val.report.to_json()
    assert train.classes == ["cat", "dog"]
    found = _all_images(splits)
    assert found["b.png"].path == tmp_path / image_dir / "b.png"  # by <path>'s file name only
    assert "photo_d.jpg" in found and "c.jpg" in found  # by the Windows <path>; by the XML's stem
    np.testing.assert_allclose(found["b.png"].boxes_xyxy, [[2, 3, 20, 30]])  # 1-based inclusive -> continuous
    assert found["a.jpg"].labels.tolist() == [0]
    assert _counts(train)["missing_images"] == 1 and _counts(train)["filename_not_found"] == 1
    assert train.searched == [str(tmp_path / xml_dir)]


def test_voc_xml_beside_its_images_and_one_level_down(tmp_path: Path) -> None:
    """labelImg's default: each XML saved next to its image; the dataset unzipped one folder deep."""
    folder = tmp_path / "export" / "pics"
    for k in range(4):
        _image(folder / f"p{k}.jpg")
        (folder / f"p{k}.xml").write_text(_xml(f"p{k}.jpg", None, (1, 1, 10, 10)))
    splits = read_dataset(tmp_path)
    assert sum(len(s.images) for s in splits) == 4 and splits[0].format == "voc"


def test_voc_by_content_ignores_other_xml_and_keeps_helpful_errors(tmp_path: Path) -> None:
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "a.xml").write_text("<config><x>1</x></config>")  # XML, but not VOC
    _image(tmp_path / "images" / "a.jpg")
    with pytest.raises(OnedetError, match="unrecognised dataset layout"):
        detect_format(tmp_path)
    (tmp_path / "meta" / "a.xml").write_text(_xml("a.jpg", None, (1, 1, 4, 4)))
    (tmp_path / "more").mkdir()
    (tmp_path / "more" / "a.xml").write_text(_xml("a.jpg", None, (1, 1, 4, 4)))
    with pytest.raises(OnedetError, match="several VOC annotation folders"):
        detect_format(tmp_path)


def _roboflow_voc(root: Path, nested: bool) -> None:
    """Roboflow's Pascal VOC export: train/, valid/, test/, each of images with their XML beside them (or, nested,
    each with its own annotations/ + images/). valid/ has an XML whose image is only in train/."""
    (root / "README.roboflow.txt").write_text("Exported via roboflow.com\n")
    (root / "README.dataset.txt").write_text("# Cells > raw\n")
    for split, n, name in (("train", 6, "cat"), ("valid", 3, "dog"), ("test", 2, "bird")):
        xml_dir, image_dir = (root / split / "annotations", root / split / "images") if nested else (root / split,) * 2
        xml_dir.mkdir(parents=True, exist_ok=True)
        for k in range(n):
            stem = f"{split}{k}_jpg.rf.{k:032x}"
            _image(image_dir / f"{stem}.jpg")
            (xml_dir / f"{stem}.xml").write_text(_xml(f"{stem}.jpg", None, (1, 1, 10, 10), name))
    valid_xml = root / "valid" / "annotations" if nested else root / "valid"
    (valid_xml / "x.xml").write_text(_xml("train0_jpg.rf.00000000000000000000000000000000.jpg", None, (1, 1, 4, 4)))


@pytest.mark.parametrize("nested", [False, True])
def test_voc_split_folders_are_splits_with_one_class_list(tmp_path: Path, nested: bool) -> None:
    _roboflow_voc(tmp_path, nested)
    assert detect_format(tmp_path) == "voc"
    splits = read_dataset(tmp_path)
    assert [s.name for s in splits] == ["train", "val", "test"]  # valid -> val; no val held out of train
    assert [len(s.images) for s in splits] == [6, 3, 2]
    assert all(s.classes == ["bird", "cat", "dog"] for s in splits)  # the sorted union, the same for every split
    train, val, _ = splits
    assert {im.labels.tolist()[0] for im in train.images} == {1} and val.images[0].labels.tolist() == [2]
    assert all(im.path.parent.parent == tmp_path / "valid" or im.path.parent == tmp_path / "valid" for im in val.images)
    assert _counts(val) == {"missing_images": 1}  # x.xml's image is in train/: each split looks in its own folder
    assert "held_out_val" not in val.report.to_json() and _counts(train) == {}
    valid_xml = tmp_path / "valid" / "annotations" if nested else tmp_path / "valid"
    assert val.searched == [str(valid_xml)]


def test_voc_folders_not_named_as_splits_are_still_ambiguous(tmp_path: Path) -> None:
    for folder in ("train", "valid", "val"):  # valid and val: the same split twice
        _image(tmp_path / folder / "a.jpg")
        (tmp_path / folder / "a.xml").write_text(_xml("a.jpg", None, (1, 1, 4, 4)))
    with pytest.raises(OnedetError, match="several VOC annotation folders"):
        detect_format(tmp_path)


def test_voc_split_folders_of_xml_beside_one_images_folder(tmp_path: Path) -> None:
    for split, k in (("train", 0), ("train", 1), ("train", 2), ("valid", 3)):
        _image(tmp_path / "images" / f"{k}.jpg")
        (tmp_path / split).mkdir(exist_ok=True)
        (tmp_path / split / f"{k}.xml").write_text(_xml(f"{k}.jpg", None, (1, 1, 4, 4)))
    splits = read_dataset(tmp_path)
    assert [(s.name, [im.path.name for im in s.images]) for s in splits] == [
        ("train", ["0.jpg", "1.jpg", "2.jpg"]),
        ("val", ["3.jpg"]),
    ]


def _cvat_voc(root: Path, names: list[str], split_file: str = "default") -> None:
    """CVAT's Pascal VOC export: Annotations/ + JPEGImages/, one split file named after CVAT's subset ("default"),
    per-class lists beside it; names may have sub-folders."""
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "labelmap.txt").write_text("# label:color_rgb:parts:actions\ndog:250,50,83::\n")
    for name in names:
        _image(root / "JPEGImages" / f"{name}.jpg")
        (root / "Annotations" / f"{name}.xml").parent.mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / f"{name}.xml").write_text(_xml(f"{name}.jpg", None, (1, 1, 10, 10)))
    (root / "ImageSets" / "Main" / f"{split_file}.txt").write_text("".join(f"{n}\n" for n in names))
    (root / "ImageSets" / "Main" / f"dog_{split_file}.txt").write_text("".join(f"{n} 1\n" for n in names))


@pytest.mark.parametrize("split_file", ["default", "batch1", "Subset_1"])  # an underscore, yet not a per-class list
def test_voc_single_unknown_split_file_is_train_with_held_out_val(tmp_path: Path, split_file: str) -> None:
    _cvat_voc(tmp_path, [f"frame_{k:06d}" for k in range(20)], split_file)
    splits = read_dataset(tmp_path)
    assert [s.name for s in splits] == ["train", "val"]  # not "default" beside a val held out of it
    train, val = splits
    assert [len(train.images), len(val.images)] == [18, 2]
    assert {im.path for im in train.images}.isdisjoint(im.path for im in val.images)
    assert [im.path for im in val.images] == [im.path for im in read_dataset(tmp_path)[1].images]  # deterministic
    assert "held out 2 images" in val.report.to_json()["held_out_val"]["note"]
    note = train.report.to_json()["single_split_file"]["note"]
    assert f"{split_file}.txt" in note and "train" in note


def test_voc_cvat_sub_folders_and_filenames_without_extension(tmp_path: Path) -> None:
    """Split files name `cam1/0001`; <filename> is the bare `0001.jpg` (cam2), or `0001` with no extension (cam1);
    a stray JPEGImages/0001.jpg of the same name must not be taken for either."""
    _cvat_voc(tmp_path, ["cam1/0001", "cam2/0001", "0001"])
    (tmp_path / "Annotations" / "cam1" / "0001.xml").write_text(_xml("0001", None, (1, 1, 10, 10), "cat"))
    (tmp_path / "Annotations" / "cam2" / "0001.xml").write_text(_xml("0001.jpg", None, (1, 1, 20, 20), "bird"))
    (train,) = read_dataset(tmp_path, holdout_fraction=0)
    by_path = {im.path.relative_to(tmp_path / "JPEGImages").as_posix(): im for im in train.images}
    assert sorted(by_path) == ["0001.jpg", "cam1/0001.jpg", "cam2/0001.jpg"]
    assert [train.classes[i] for p in sorted(by_path) for i in by_path[p].labels] == ["dog", "cat", "bird"]
    assert _counts(train) == {"single_split_file": 0}  # found by <filename>: no filename_not_found


# --- YOLO: Ultralytics' layout with a symlinked images/ ---------------------------------------------------------


def _ultralytics(tmp_path: Path, with_yaml: bool) -> Path:
    """`tmp/images/{train2017,val2017}` real; `tmp/dataset/images -> ../images`; labels in `dataset/labels`."""
    for split, n in (("train2017", 6), ("val2017", 3)):
        labels = tmp_path / "dataset" / "labels" / split
        labels.mkdir(parents=True)
        for k in range(n):
            _image(tmp_path / "images" / split / f"{split}_{k}.jpg")
            (labels / f"{split}_{k}.txt").write_text(f"{k % 2} 0.5 0.5 0.25 0.5\n")
    (tmp_path / "dataset" / "labels" / "train2017" / "gone_1.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    (tmp_path / "dataset" / "labels" / "val2017" / "gone_2.txt").write_text("1 0.5 0.5 0.1 0.1\n")
    os.symlink("../images", tmp_path / "dataset" / "images")
    if with_yaml:  # coco128.yaml's style
        (tmp_path / "dataset" / "data.yaml").write_text(
            "path: .\ntrain: images/train2017\nval: images/val2017\nnames:\n  0: cat\n  1: dog\n"
        )
    return tmp_path / "dataset"


@pytest.mark.parametrize("with_yaml", [True, False])
def test_yolo_symlinked_images_folder_finds_labels_and_orphans(tmp_path: Path, with_yaml: bool) -> None:
    splits = {s.name: s for s in read_dataset(_ultralytics(tmp_path, with_yaml))}
    assert list(splits) == ["train", "val"]
    train, val = splits["train"], splits["val"]
    assert [len(train.images), len(val.images)] == [6, 3]
    assert all(len(im.boxes_xyxy) == 1 and im.labeled for s in splits.values() for im in s.images)
    np.testing.assert_allclose(train.images[0].boxes_xyxy, [[15, 7.5, 25, 22.5]])
    # image paths as written (through the symlink), never resolved
    assert all("dataset/images" in im.path.as_posix() for im in train.images)
    assert train.report.to_json()["labels_without_image"]["files"] == [
        str(tmp_path / "dataset" / "labels" / "train2017" / "gone_1.txt")
    ]
    assert _counts(val)["labels_without_image"] == 1
    assert train.searched == [str(tmp_path / "dataset" / "labels" / "train2017")]


def test_symlink_loops_are_skipped_and_counted_not_walked_forever(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "train" / "a.jpg")
    _image(tmp_path / "images" / "train" / "deep" / "b.jpg")
    os.symlink("..", tmp_path / "images" / "train" / "deep" / "up")  # a loop back to train/
    os.symlink("self", tmp_path / "images" / "train" / "self")  # a link to itself (ELOOP)
    (tmp_path / "labels" / "train").mkdir(parents=True)
    (tmp_path / "labels" / "train" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    report = Report()
    found = list_images(tmp_path / "images" / "train", report)
    assert [p.name for p in found] == ["a.jpg", "b.jpg"]
    assert len(report.items[REPEATED_FOLDERS]) == 2
    with pytest.raises(OnedetError, match="symlink"):
        list_images(tmp_path / "images" / "train")  # without a report to count it in: a clear error
    (train,) = [s for s in read_dataset(tmp_path, holdout_fraction=0) if s.name == "train"]
    assert _counts(train)[REPEATED_FOLDERS] == 2 and len(train.images) == 2


def test_yolo_symlinked_image_subfolder_is_listed(tmp_path: Path) -> None:
    """A split folder that is itself a symlink elsewhere (Path.rglob would not descend into it)."""
    _image(tmp_path / "elsewhere" / "sub" / "a.jpg")
    (tmp_path / "ds" / "images").mkdir(parents=True)
    os.symlink(tmp_path / "elsewhere", tmp_path / "ds" / "images" / "shared")
    assert [p.name for p in list_images(tmp_path / "ds" / "images", Report())] == ["a.jpg"]
