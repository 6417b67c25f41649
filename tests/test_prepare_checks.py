"""prepare's checks across splits: splits without labels refused (unless allowed), images shared between splits
reported, unlabeled stores; on small layouts built here, the synthetic dataset, and the real datasets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from onedet.cli import main
from onedet.data.checks import DUPLICATES, DUPLICATES_WITHIN, check_labels_found
from onedet.data.formats import read_dataset
from onedet.data.prepare import prepare
from onedet.data.store import Store, summarize
from onedet.data.synthetic import make_synthetic
from onedet.errors import OnedetError

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")
SIZE = 32


def _image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (24, 30, 3), dtype=np.uint8)  # distinct bytes per seed
    Image.fromarray(pixels).save(path)


def _roboflow_yolo(root: Path, counts: dict[str, int], labeled: dict[str, int] | None = None) -> Path:
    """`{split}/{images,labels}` + data.yaml; the first `labeled[split]` images of each split get a label file."""
    seed = 0
    for split, n in counts.items():
        (root / split / "labels").mkdir(parents=True, exist_ok=True)
        for k in range(n):
            _image(root / split / "images" / f"{split}_{k}.png", seed := seed + 1)
            if k < (labeled or counts)[split]:
                (root / split / "labels" / f"{split}_{k}.txt").write_text("0 0.5 0.5 0.4 0.4\n")
    (root / "data.yaml").write_text("train: train/images\nval: valid/images\nnames: [thing]\n")
    return root


def _splits(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) if out.exists() else []


# --- splits without labels -----------------------------------------------------------------------------------


def test_split_without_labels_is_an_error_naming_the_folder_then_allowed(tmp_path: Path) -> None:
    src = _roboflow_yolo(tmp_path / "src", {"train": 4, "valid": 3})
    shutil.rmtree(src / "valid" / "labels")  # e.g. labels unzipped somewhere else
    out = tmp_path / "store"
    with pytest.raises(OnedetError, match=r"split 'val': only 0 of its 3 images have labels.*valid/labels") as e:
        prepare(src, out, image_size=SIZE, workers=1, progress=False)
    assert "--allow-background" in str(e.value)
    assert _splits(out) == []  # refused before anything is written
    prepare(src, out, image_size=SIZE, workers=1, progress=False, allow_background=True)
    assert Store(out / "val").meta["num_boxes"] == 0 and Store(out / "train").meta["num_boxes"] == 4


def test_split_mostly_without_labels_while_others_have_them(tmp_path: Path) -> None:
    src = _roboflow_yolo(tmp_path / "src", {"train": 10, "valid": 3}, labeled={"train": 4, "valid": 3})
    with pytest.raises(OnedetError, match=r"split 'train': only 4 of its 10 images have labels"):
        prepare(src, tmp_path / "store", image_size=SIZE, workers=1, progress=False)
    src2 = _roboflow_yolo(tmp_path / "src2", {"train": 10, "valid": 3}, labeled={"train": 5, "valid": 3})
    prepare(src2, tmp_path / "store2", image_size=SIZE, workers=1, progress=False)  # half is enough
    assert Store(tmp_path / "store2" / "train").meta["report"]["images_without_labels"]["count"] == 5


def test_coco_split_without_annotations_names_its_json(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for split, anns in (("train", True), ("val", False)):
        _image(src / split / "a.png", seed=len(split))
        doc = {
            "images": [{"id": 1, "file_name": "a.png", "width": 30, "height": 24}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]}] if anns else [],
            "categories": [{"id": 1, "name": "x"}],
        }
        (src / "annotations").mkdir(parents=True, exist_ok=True)
        (src / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc))
    with pytest.raises(OnedetError, match=r"'val'.*instances_val\.json"):
        prepare(src, tmp_path / "store", image_size=SIZE, workers=1, progress=False)


def test_cli_allow_background(tmp_path: Path, capsys) -> None:
    src = _roboflow_yolo(tmp_path / "src", {"train": 2, "valid": 2}, labeled={"train": 0, "valid": 0})
    args = ["prepare", str(src), "--out", str(tmp_path / "store"), "--image-size", str(SIZE), "--workers", "1"]
    assert main(args) == 2
    assert "have labels" in capsys.readouterr().err
    assert main([*args, "--allow-background"]) == 0


@pytest.mark.parametrize("fmt", ["coco", "yolo", "voc"])
def test_synthetic_dataset_is_not_refused(tmp_path: Path, fmt: str) -> None:
    check_labels_found(read_dataset(make_synthetic(tmp_path / fmt, num_images=12, image_size=64, format=fmt)))


@pytest.mark.parametrize("name", ["bccd", "aquarium", "coco128_coco"])
def test_real_datasets_are_not_refused(shared_data: Path, name: str) -> None:
    """aquarium has an empty label file and coco128 images without annotations: both legitimate."""
    datasets = read_dataset(shared_data / name)
    check_labels_found(datasets)
    assert all(sum(im.labeled for im in d.images) > 0.9 * len(d.images) for d in datasets)


# --- images shared between splits ----------------------------------------------------------------------------


def _prepare_with_a_copy(tmp_path: Path, image: str, into: str, name: str) -> Path:
    """A Roboflow YOLO dataset (train 4, valid 3) where train's `image` is copied into split `into` as `name` (with
    a label), prepared by the CLI into `tmp_path/store`."""
    src = _roboflow_yolo(tmp_path / "src", {"train": 4, "valid": 3})
    shutil.copy(src / "train" / "images" / image, src / into / "images" / f"{name}.png")
    (src / into / "labels" / f"{name}.txt").write_text("0 0.5 0.5 0.4 0.4\n")
    out = tmp_path / "store"
    assert main(["prepare", str(src), "--out", str(out), "--image-size", str(SIZE), "--workers", "2"]) == 0
    return out


def test_duplicates_across_splits_reported_on_both_and_in_info(tmp_path: Path, capsys) -> None:
    out = _prepare_with_a_copy(tmp_path, "train_2.png", "valid", "copy_of_2")
    captured = capsys.readouterr()
    assert "warning: 1 images of train are also in val (same bytes): train_2.png" in captured.err
    assert f"{DUPLICATES} in the report of train, val" in captured.err
    assert DUPLICATES in captured.out  # the summary printed after prepare
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    train, val = info["train"]["report"][DUPLICATES], info["val"]["report"][DUPLICATES]
    assert train["count"] == 1 and [Path(f).name for f in train["files"]] == ["train_2.png"]
    assert val["count"] == 1 and [Path(f).name for f in val["files"]] == ["copy_of_2.png"]
    assert "copy_of_2.png" in val["note"] and "train" in val["note"]
    assert Store(out / "val").meta["num_images"] == 4  # a warning: nothing is dropped


def test_duplicates_within_a_split_reported_on_that_split(tmp_path: Path, capsys) -> None:
    out = _prepare_with_a_copy(tmp_path, "train_1.png", "train", "train_1 (copy)")
    captured = capsys.readouterr()
    err = captured.err
    assert "1 images of train repeat another image of train (same bytes)" in err
    assert f"see {DUPLICATES_WITHIN} in the report of train" in err and DUPLICATES not in err
    assert DUPLICATES_WITHIN in captured.out.split("fixed / skipped:")[0]  # the summary lists it as a warning
    reports = summarize(out)
    found = reports["train"]["report"][DUPLICATES_WITHIN]
    assert found["count"] == 1 and [Path(f).name for f in found["files"]] in (["train_1.png"], ["train_1 (copy).png"])
    assert DUPLICATES_WITHIN not in reports["val"]["report"]
    assert Store(out / "train").meta["num_images"] == 5  # a warning: nothing is dropped


def test_no_duplicates_no_report_kind(tmp_path: Path) -> None:
    src = _roboflow_yolo(tmp_path / "src", {"train": 3, "valid": 2})
    prepare(src, tmp_path / "store", image_size=SIZE, workers=1, progress=False)
    assert all(DUPLICATES not in s["report"] and DUPLICATES_WITHIN not in s["report"]
               for s in summarize(tmp_path / "store").values())  # fmt: skip


# --- unlabeled stores ----------------------------------------------------------------------------------------


def test_unlabeled_folder_of_bare_images(tmp_path: Path, capsys) -> None:
    for k in range(3):
        _image(tmp_path / "photos" / f"p{k}.jpg", k)
    _image(tmp_path / "photos" / "more" / "q.png", 9)
    with pytest.raises(OnedetError, match="unrecognised dataset layout"):
        prepare(tmp_path / "photos", tmp_path / "store", image_size=SIZE, workers=1, progress=False)
    names = prepare(tmp_path / "photos", tmp_path / "store", image_size=SIZE, workers=1, progress=False, unlabeled=True)
    assert names == ["unlabeled"]
    store = Store(tmp_path / "store" / "unlabeled")
    assert len(store) == 4 and store.meta["num_boxes"] == 0 and store.classes == []
    assert not store.read_batch(np.arange(4))["valid"].any()
    args = ["prepare", str(tmp_path / "photos"), "--out", str(tmp_path / "cli"), "--image-size", str(SIZE)]
    assert main([*args, "--unlabeled", "--workers", "1"]) == 0
    assert summarize(tmp_path / "cli")["unlabeled"]["images"] == 4


def test_unlabeled_reads_every_image_of_a_dataset(tmp_path: Path) -> None:
    src = _roboflow_yolo(tmp_path / "src", {"train": 3, "valid": 2})
    prepare(src, tmp_path / "store", image_size=SIZE, workers=1, progress=False, unlabeled=True)
    assert _splits(tmp_path / "store") == ["unlabeled"] and len(Store(tmp_path / "store" / "unlabeled")) == 5
