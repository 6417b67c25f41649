"""`Store`: opening (and refusing) stores, batch reads against the tensordict, `summarize` / `format_summary`."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from tensordict import TensorDict

from onedet.data.prepare import prepare
from onedet.data.records import Report, SourceDataset, SourceImage
from onedet.data.store import Store, format_summary, summarize
from onedet.errors import OnedetError

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")

CLASSES = ["a", "b", "c"]


@pytest.fixture(scope="module")
def store_root(tmp_path_factory):
    """train (6 images, 0..4 boxes each, one crowd region) and val (2 images), raw layout at 48 px."""
    tmp = tmp_path_factory.mktemp("store")
    rng = np.random.default_rng(0)
    splits = []
    for name, n in (("train", 6), ("val", 2)):
        images = []
        for i in range(n):
            h, w = int(rng.integers(30, 90)), int(rng.integers(30, 90))
            path = tmp / f"{name}{i}.png"
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
            k = i % 5
            boxes = np.array([[1 + j, 2, 10 + 2 * j, 20] for j in range(k)], np.float32).reshape(-1, 4)
            crowd = np.array([[0, 0, 5, 5]], np.float32) if i == 1 else np.zeros((0, 4), np.float32)
            crowd_labels = np.array([2] * len(crowd), np.int64)
            images.append(
                SourceImage(
                    path, boxes, np.arange(k) % 3, crowd, image_id=-1, size_hw=(h, w), crowd_labels=crowd_labels
                )
            )
        report = Report()
        report.add("background_images", images[0].path)
        splits.append(SourceDataset(name, "voc", CLASSES, [0, 1, 2], images, report))
    prepare(splits, tmp / "store", image_size=48, workers=1, progress=False)
    prepare(splits, tmp / "compact", image_size=48, workers=1, progress=False, layout="compact")
    return tmp / "store"


def test_metadata_and_shapes(store_root):
    store = Store(store_root / "train")
    meta = json.loads((store_root / "train" / "meta.json").read_text())
    assert meta["complete"] is True and meta["version"] == 1 and meta["split"] == "train"
    assert len(store) == meta["num_images"] == 6 and store.files == meta["files"]
    assert store.classes == CLASSES and store.category_ids == [0, 1, 2]
    assert meta["max_boxes"] == store.max_boxes == 4  # the largest count in the split
    assert meta["num_boxes"] == 0 + 1 + 2 + 3 + 4 + 0
    td = TensorDict.load_memmap(store_root / "train" / "td")  # the schema, as any tensordict user sees it
    assert td["images"].shape == (6, 3, 48, 48) and td["images"].dtype == torch.uint8
    assert td["boxes_xyxy"].shape == (6, 4, 4) and td["crowd_boxes_xyxy"].shape == (6, 1, 4)
    assert td["image_id"].tolist() == list(range(6))  # no dataset ids: the index
    assert td["crowd_valid"][:, 0].tolist() == [False, True, False, False, False, False]
    assert td["crowd_labels"].dtype == torch.int64 and td["crowd_labels"][:, 0].tolist() == [0, 2, 0, 0, 0, 0]


def test_read_batch_matches_tensordict_in_the_given_order(store_root):
    store = Store(store_root / "train")
    td = TensorDict.load_memmap(store_root / "train" / "td")
    idx = np.array([4, 1, 5, 1])
    batch = store.read_batch(idx)
    keys = ("images", "boxes_xyxy", "labels", "valid", "crowd_boxes_xyxy", "crowd_valid", "crowd_labels", "orig_size")
    for key in (*keys, "scale"):
        assert torch.equal(batch[key], td[key][torch.from_numpy(idx)]), key
    assert batch["index"].tolist() == [4, 1, 5, 1]
    assert torch.equal(store.read_batch(torch.tensor([2]))["images"][0], store.read_image(2))
    assert store.read_batch(np.array([], np.int64))["images"].shape == (0, 3, 48, 48)
    with pytest.raises(IndexError):
        store.read_batch([6])
    # padding rows are invalid and zero
    assert not batch["valid"][0, 4:].any() and batch["valid"][0].sum() == 4
    assert (batch["boxes_xyxy"][1, 1:] == 0).all()


@pytest.mark.parametrize("layout", ["store", "compact"])
def test_read_batch_into_buffers_equals_a_fresh_read(store_root, layout):
    store = Store(store_root.parent / layout / "train")
    idx = np.array([5, 0, 3])
    fresh = store.read_batch(idx)
    out = {
        "images": torch.full((3, 3, 48, 48), 7, dtype=torch.uint8),
        "boxes_xyxy": torch.full((3, 4, 4), -1.0),
        "valid": torch.ones(3, 4, dtype=torch.bool),
        "crowd_labels": torch.full((3, 1), 9, dtype=torch.int64),
    }
    before = {k: v.data_ptr() for k, v in out.items()}
    into = store.read_batch(idx, out=out)
    for key in fresh:
        assert torch.equal(into[key], fresh[key]), key
    for key, buf in out.items():  # read into the given memory, and that memory is what comes back
        assert into[key] is buf and buf.data_ptr() == before[key], key
    # a buffer that is reused for other rows holds exactly those rows
    again = store.read_batch(np.array([1, 2, 4]), out=out)
    assert torch.equal(again["images"], store.read_batch(np.array([1, 2, 4]))["images"])
    # a smaller last batch reads into the first rows of a larger buffer
    first = store.read_batch([2], out={"images": out["images"][:1]})
    assert torch.equal(first["images"][0], store.read_image(2)) and torch.equal(out["images"][0], store.read_image(2))
    with pytest.raises(ValueError, match="shape"):
        store.read_batch(idx, out={"images": torch.empty(2, 3, 48, 48, dtype=torch.uint8)})
    with pytest.raises(ValueError, match="uint8"):
        store.read_batch(idx, out={"images": torch.empty(3, 3, 48, 48)})
    with pytest.raises(ValueError, match="no batch key"):
        store.read_batch(idx, out={"index": torch.empty(3, dtype=torch.int64)})
    with pytest.raises(ValueError, match="on the CPU"):
        store.read_batch(idx, out={"valid": torch.empty(3, 4, dtype=torch.bool, device="meta")})


def test_store_refuses_what_is_not_a_complete_store(store_root, tmp_path):
    with pytest.raises(OnedetError, match="no such store"):
        Store(tmp_path / "missing")
    with pytest.raises(OnedetError, match=r"splits \['train', 'val'\]"):
        Store(store_root)  # the root, not a split
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "td").mkdir()
    with pytest.raises(OnedetError, match="incomplete"):
        Store(tmp_path / "half")
    (tmp_path / "half" / "meta.json").write_text(json.dumps({"version": 1, "complete": False}))
    with pytest.raises(OnedetError, match="incomplete"):
        Store(tmp_path / "half")


def test_store_without_crowd_labels_reads_them_as_unknown(store_root, tmp_path):
    """A version-1 store written before `crowd_labels` existed still opens: its crowd regions read as -1 (class
    unknown), which evaluation ignores for every class, as it did when the store was written."""
    old = tmp_path / "train"
    shutil.copytree(store_root / "train", old)
    td_meta = json.loads((old / "td" / "meta.json").read_text())
    del td_meta["crowd_labels"]
    (old / "td" / "meta.json").write_text(json.dumps(td_meta))
    (old / "td" / "crowd_labels.memmap").unlink()
    store = Store(old)
    assert "crowd_labels" not in set(store.td.keys())
    batch = store.read_batch([1, 0])
    assert batch["crowd_labels"].tolist() == [[-1], [-1]] and batch["crowd_labels"].dtype == torch.int64
    assert torch.equal(batch["crowd_boxes_xyxy"], Store(store_root / "train").read_batch([1, 0])["crowd_boxes_xyxy"])
    out = {"crowd_labels": torch.zeros(2, 1, dtype=torch.int64)}
    assert store.read_batch([1, 0], out=out)["crowd_labels"] is out["crowd_labels"]
    assert out["crowd_labels"].tolist() == [[-1], [-1]]


def test_summarize_and_format(store_root):
    summary = summarize(store_root)
    assert list(summary) == ["train", "val"]
    train = summary["train"]
    assert train["images"] == 6 and train["boxes"] == 10 and train["classes"] == CLASSES
    assert train["per_class"] == {"a": 5, "b": 3, "c": 2}  # labels j % 3 for j < k, k = 0, 1, 2, 3, 4, 0
    store = Store(store_root / "train")
    del store.meta["boxes_per_class"]  # the same counts from the labels themselves
    assert store.class_counts() == [5, 3, 2]
    assert train["report"]["background_images"]["count"] == 1
    assert list(summarize(store_root / "val")) == ["val"]
    hidden = store_root / ".train.tmp-999999"  # a prepare killed just before its rename: not a split
    hidden.mkdir()
    (hidden / "meta.json").write_text((store_root / "train" / "meta.json").read_text())
    try:
        assert list(summarize(store_root)) == ["train", "val"]
    finally:
        (hidden / "meta.json").unlink()
        hidden.rmdir()
    text = format_summary(summary)
    assert "train: 6 images, 10 boxes, 3 classes" in text and "background_images" in text
    assert "val: 2 images" in text


def test_boxes_are_the_source_boxes_in_original_pixels_without_crowds(store_root):
    """`Store.boxes()` against the fixture's own boxes: image i of train has i % 5 boxes [1 + j, 2, 10 + 2j, 20],
    labels j % 3; the crowd region of image 1 is not among them."""
    store = Store(store_root / "train")
    table = store.boxes()
    expected_boxes, expected_labels, expected_image = [], [], []
    for index, file in enumerate(store.files):
        i = int(file.rsplit("train", 1)[1].split(".")[0])
        for j in range(i % 5):
            expected_boxes.append([1 + j, 2, 10 + 2 * j, 20])
            expected_labels.append(j % 3)
            expected_image.append(index)
    np.testing.assert_array_equal(table["image"], expected_image)
    np.testing.assert_array_equal(table["labels"], expected_labels)
    np.testing.assert_allclose(table["orig_boxes_xyxy"], expected_boxes, atol=1e-3)
    scale = store.read_batch(np.arange(len(store)))["scale"].numpy()
    np.testing.assert_allclose(table["boxes_xyxy"], table["orig_boxes_xyxy"] * scale[table["image"], None], rtol=1e-6)
    assert table["orig_size"].shape == (len(store), 2)


def test_info_plots_draw_each_split(store_root, tmp_path, capsys):
    from onedet.cli import main

    assert main(["info", str(store_root), "--plots", str(tmp_path / "plots")]) == 0
    assert "plots written" in capsys.readouterr().out
    for split in ("train", "val"):
        assert (tmp_path / "plots" / f"boxes_{split}.png").read_bytes()[:4] == b"\x89PNG"


def test_plot_boxes_of_a_split_without_boxes(tmp_path):
    from onedet.train.plots import plot_boxes

    empty = {"image": np.zeros(0, int), "labels": np.zeros(0, int), "boxes_xyxy": np.zeros((0, 4))}
    empty |= {"orig_boxes_xyxy": np.zeros((0, 4)), "orig_size": np.full((3, 2), 64)}
    assert plot_boxes(empty, CLASSES, 48, tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"
