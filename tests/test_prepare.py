"""`onedet prepare`: round trips per format, bad images, atomic writes, both layouts, the CLI, real datasets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from onedet.cli import main
from onedet.data.images import load_image
from onedet.data.letterbox import letterbox_image, letterbox_params, letterbox_torch
from onedet.data.prepare import UNREADABLE, prepare
from onedet.data.records import SourceDataset, SourceImage
from onedet.data.store import Store, summarize
from onedet.errors import OnedetError

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")
SIZE = 64
CLASSES = ["cat", "dog", "emu"]
COCO_IDS = [3, 7, 11]  # non-contiguous, as in COCO
SPLITS = {"train": [(60, 90), (100, 40), (75, 75)], "val": [(50, 70), (33, 80)]}


def _smooth_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth colour image (JPEG-friendly, unlike noise) with a little texture."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (h + w)], -1)
    return np.clip(base + rng.normal(0, 4, (h, w, 3)), 0, 255).astype(np.uint8)


def _truth(rng: np.random.Generator, h: int, w: int, integer: bool) -> tuple[np.ndarray, np.ndarray]:
    """1..3 boxes well inside an h x w image (xyxy, continuous pixels) and their labels."""
    k = int(rng.integers(1, 4))
    x0, y0 = rng.uniform(0, w * 0.5, k), rng.uniform(0, h * 0.5, k)
    x1, y1 = x0 + rng.uniform(4, w * 0.45, k), y0 + rng.uniform(4, h * 0.45, k)
    boxes = np.stack([x0, y0, x1, y1], 1)
    return (np.round(boxes) if integer else boxes), rng.integers(0, len(CLASSES), k)


def write_dataset(root: Path, fmt: str, seed: int = 0) -> dict[str, list[tuple[str, np.ndarray, np.ndarray]]]:
    """A tiny two-split dataset in `fmt` with PNG images; returns {split: [(file stem, boxes, labels)]}."""
    rng = np.random.default_rng(seed)
    truth: dict[str, list] = {}
    for split, sizes in SPLITS.items():
        truth[split] = []
        coco = {
            "images": [],
            "annotations": [],
            "categories": [{"id": i, "name": n} for i, n in zip(COCO_IDS, CLASSES)],
        }
        for j, (h, w) in enumerate(sizes):
            stem = f"{split}_{j}"
            boxes, labels = _truth(rng, h, w, integer=fmt == "voc")
            truth[split].append((stem, boxes, labels))
            folder = {"coco": root / split, "yolo": root / split / "images", "voc": root / "JPEGImages"}[fmt]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(_smooth_image(rng, h, w)).save(folder / f"{stem}.png")
            if fmt == "coco":
                image_id = 100 * (split == "val") + j + 1
                coco["images"].append({"id": image_id, "file_name": f"{stem}.png", "height": h, "width": w})
                for b, lab in zip(boxes, labels):
                    ann = {"id": len(coco["annotations"]) + 1000 * image_id, "image_id": image_id, "iscrowd": 0}
                    ann |= {"category_id": COCO_IDS[lab], "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]}
                    coco["annotations"].append(ann)
            elif fmt == "yolo":
                (root / split / "labels").mkdir(parents=True, exist_ok=True)
                rows = [
                    f"{lab} {(b[0] + b[2]) / 2 / w:.7f} {(b[1] + b[3]) / 2 / h:.7f} {(b[2] - b[0]) / w:.7f} "
                    f"{(b[3] - b[1]) / h:.7f}"
                    for b, lab in zip(boxes, labels)
                ]
                (root / split / "labels" / f"{stem}.txt").write_text("\n".join(rows) + "\n")
            else:  # VOC: 1-based inclusive pixel indices, so continuous x0 is xmin - 1
                objects = "".join(
                    f"<object><name>{CLASSES[lab]}</name><difficult>0</difficult><bndbox><xmin>{int(b[0]) + 1}</xmin>"
                    f"<ymin>{int(b[1]) + 1}</ymin><xmax>{int(b[2])}</xmax><ymax>{int(b[3])}</ymax></bndbox></object>"
                    for b, lab in zip(boxes, labels)
                )
                (root / "Annotations").mkdir(exist_ok=True)
                (root / "Annotations" / f"{stem}.xml").write_text(
                    f"<annotation><filename>{stem}.png</filename><size><width>{w}</width><height>{h}</height>"
                    f"<depth>3</depth></size>{objects}</annotation>"
                )
        if fmt == "coco":
            (root / "annotations").mkdir(exist_ok=True)
            (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
        elif fmt == "voc":
            (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
            (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(s + "\n" for s, _, _ in truth[split]))
    if fmt == "yolo":
        (root / "data.yaml").write_text(f"train: train/images\nval: val/images\nnc: 3\nnames: {CLASSES}\n")
    return truth


def _source_dataset(folder: Path, n: int, bad: set[int] = frozenset(), seed: int = 0) -> SourceDataset:
    """n PNG images of varied sizes with one box each (box i spans a tenth of the image); `bad` ones corrupt."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    for i in range(n):
        h, w = int(rng.integers(40, 120)), int(rng.integers(40, 120))
        path = folder / f"img{i}.png"
        if i in bad:
            path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)  # a PNG signature and garbage
        else:
            Image.fromarray(_smooth_image(rng, h, w)).save(path)
        box = np.array([[w * 0.1, h * 0.1, w * 0.2 + i % 7, h * 0.3]], np.float32)
        images.append(SourceImage(path, box, np.array([i % 3]), image_id=1000 + i, size_hw=(h, w)))
    return SourceDataset("train", "coco", CLASSES, COCO_IDS, images)


# --- the letterbox --------------------------------------------------------------------------------------------


def test_letterbox_params_round_half_up_and_scale():
    assert letterbox_params(480, 640, 640) == (1.0, 480, 640)
    assert letterbox_params(640, 480, 320) == (0.5, 320, 240)
    assert letterbox_params(1, 4, 2) == (0.5, 1, 2)  # 0.5 rounds up, in exact integer arithmetic
    assert letterbox_params(3, 1000, 64)[1:] == (1, 64)  # never zero
    scale, nh, nw = letterbox_params(333, 517, 160)
    assert (nh, nw) == (round(333 * scale), 160)


def test_letterbox_matches_pil_and_batches():
    rng = np.random.default_rng(1)
    image = _smooth_image(rng, 90, 130)
    out = letterbox_image(image, 64)
    _, nh, nw = letterbox_params(90, 130, 64)
    pil = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR)).transpose(2, 0, 1)
    # Same kernel as PIL's antialiased bilinear up to the rounding of the last bit.
    assert np.abs(out[:, :nh, :nw].astype(int) - pil).max() <= 1
    assert (out[:, nh:, :] == 114).all() and (out[:, :, nw:] == 114).all()
    batch = torch.from_numpy(np.stack([image, image[::-1]])).permute(0, 3, 1, 2)
    boxed = letterbox_torch(batch, 64)
    assert boxed.shape == (2, 3, 64, 64) and boxed.dtype == torch.uint8
    assert torch.equal(boxed[0], torch.from_numpy(out))
    same = _smooth_image(rng, 48, 64)  # already fitting: letterbox_image skips the (identity) resize
    assert torch.equal(
        torch.from_numpy(letterbox_image(same, 64)), letterbox_torch(torch.from_numpy(same).permute(2, 0, 1), 64)
    )


# --- round trips ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["coco", "yolo", "voc"])
def test_round_trip_per_format(tmp_path, fmt):
    truth = write_dataset(tmp_path / "src", fmt)
    splits = prepare(tmp_path / "src", tmp_path / "store", image_size=SIZE, workers=1, progress=False)
    assert sorted(splits) == ["train", "val"]
    for split, items in truth.items():
        store = Store(tmp_path / "store" / split)
        assert store.classes == CLASSES and store.meta["format"] == fmt
        assert store.category_ids == (COCO_IDS if fmt == "coco" else [0, 1, 2])
        files = [Path(f).stem for f in store.files]
        batch = store.read_batch(np.arange(len(store)))
        for stem, boxes, labels in items:
            i = files.index(stem)
            n = len(boxes)
            assert batch["valid"][i].sum() == n
            back = batch["boxes_xyxy"][i, :n].double() / batch["scale"][i].double()
            np.testing.assert_allclose(back.numpy(), boxes, atol=0.5)  # store coordinates map back with / scale
            assert batch["labels"][i, :n].tolist() == labels.tolist()
            pixels, _ = load_image(tmp_path / "src" / store.files[i])
            assert tuple(batch["orig_size"][i].tolist()) == pixels.shape[:2]
            assert batch["scale"][i].item() == pytest.approx(letterbox_params(*pixels.shape[:2], SIZE)[0])
            assert torch.equal(batch["images"][i], torch.from_numpy(letterbox_image(pixels, SIZE)))
        if fmt == "coco":
            assert batch["image_id"].tolist() == sorted(batch["image_id"].tolist())
            assert set(batch["image_id"].tolist()) == {100 * (split == "val") + j + 1 for j in range(len(items))}


def test_coco_and_yolo_versions_give_the_same_store_boxes(tmp_path):
    for fmt in ("coco", "yolo"):
        write_dataset(tmp_path / fmt, fmt, seed=3)
        prepare(tmp_path / fmt, tmp_path / f"store_{fmt}", image_size=SIZE, workers=1, progress=False)
    for split in SPLITS:
        a, b = Store(tmp_path / "store_coco" / split), Store(tmp_path / "store_yolo" / split)
        assert [Path(f).name for f in a.files] == [Path(f).name for f in b.files]
        ba, bb = a.read_batch(np.arange(len(a))), b.read_batch(np.arange(len(b)))
        assert torch.equal(ba["valid"], bb["valid"]) and torch.equal(ba["labels"], bb["labels"])
        torch.testing.assert_close(ba["boxes_xyxy"], bb["boxes_xyxy"], atol=1e-3, rtol=0)  # YOLO's 7 decimals
        assert torch.equal(ba["images"], bb["images"])


def test_exif_rotation_counted_and_sizes_as_displayed(tmp_path):
    rng = np.random.default_rng(2)
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 40 high x 80 wide, displayed rotated a quarter turn: 80 high x 40 wide
    Image.fromarray(_smooth_image(rng, 40, 80)).save(path, exif=exif, quality=95)
    box = np.array([[5, 10, 30, 70]], np.float32)  # drawn on the displayed image
    ds = SourceDataset("train", "voc", CLASSES, [0, 1, 2], [SourceImage(path, box, np.array([0]), size_hw=(80, 40))])
    prepare([ds], tmp_path / "store", image_size=SIZE, workers=1, progress=False)
    store = Store(tmp_path / "store" / "train")
    batch = store.read_batch([0])
    assert batch["orig_size"][0].tolist() == [80, 40] and store.meta["report"]["exif_rotated"]["count"] == 1
    assert "size_mismatch" not in store.meta["report"]
    np.testing.assert_allclose((batch["boxes_xyxy"][0, 0] / batch["scale"][0]).numpy(), box[0], atol=1e-4)


def test_normalized_boxes_scaled_and_clipped_once(tmp_path):
    ds = _source_dataset(tmp_path / "img", 2)
    h, w = load_image(ds.images[0].path)[0].shape[:2]
    ds.images[0] = SourceImage(ds.images[0].path, np.array([[0.5, 0.5, 1.25, 0.75]]), np.array([1]), normalized=True)
    prepare([ds], tmp_path / "store", image_size=SIZE, workers=1, progress=False)
    store = Store(tmp_path / "store" / "train")
    b = store.read_batch([0])
    np.testing.assert_allclose((b["boxes_xyxy"][0, 0] / b["scale"][0]).numpy(), [w / 2, h / 2, w, 0.75 * h], atol=1e-3)
    assert store.meta["report"]["clipped_boxes"]["count"] == 1


def test_crowd_labels_stay_with_their_boxes_and_default_to_unknown(tmp_path):
    """Re-clipping (normalized record) drops a crowd box together with its label; a record without crowd labels
    stores -1 (unknown: ignored for every class); padding is label 0 with crowd_valid False."""
    ds = _source_dataset(tmp_path / "img", 3)
    crowd = np.array([[1.5, 0.1, 2.0, 0.2], [0.1, 0.1, 0.3, 0.3], [0.5, 0.5, 1.5, 0.9]])  # 1st wholly outside
    ds.images[0] = SourceImage(ds.images[0].path, np.zeros((0, 4)), np.zeros(0), crowd, normalized=True,
                               crowd_labels=np.array([2, 1, 0]))  # fmt: skip
    ds.images[1].crowd_boxes_xyxy = np.array([[1.0, 1.0, 9.0, 9.0]], np.float32)  # no crowd_labels given
    prepare([ds], tmp_path / "store", image_size=SIZE, workers=1, progress=False)
    b = Store(tmp_path / "store" / "train").read_batch([0, 1, 2])
    assert b["crowd_labels"].dtype == torch.int64 and b["crowd_labels"].shape == (3, 2)
    assert b["crowd_valid"].tolist() == [[True, True], [True, False], [False, False]]
    assert b["crowd_labels"].tolist() == [[1, 0], [-1, 0], [0, 0]]
    h, w = load_image(ds.images[0].path)[0].shape[:2]
    expected = np.array([[0.1, 0.1, 0.3, 0.3], [0.5, 0.5, 1.0, 0.9]]) * [w, h, w, h]  # the 3rd clipped at x = w
    np.testing.assert_allclose((b["crowd_boxes_xyxy"][0] / b["scale"][0]).numpy(), expected, atol=1e-3)
    ds.images[1].crowd_labels = np.array([0, 1])  # two labels for one box
    with pytest.raises(OnedetError, match=r"img1\.png: 1 crowd boxes but 2 crowd labels"):
        prepare([ds], tmp_path / "store2", image_size=SIZE, workers=1, progress=False)


# --- bad images and atomic writes -----------------------------------------------------------------------------


def test_skip_bad_counts_lists_and_keeps_alignment(tmp_path):
    ds = _source_dataset(tmp_path / "img", 9, bad={2, 5})
    prepare([ds], tmp_path / "store", image_size=SIZE, skip_bad=True, workers=2, progress=False)
    store = Store(tmp_path / "store" / "train")
    assert len(store) == 7
    report = store.meta["report"][UNREADABLE]
    assert report["count"] == 2 and [Path(f).name for f in report["files"]] == ["img2.png", "img5.png"]
    batch = store.read_batch(np.arange(7))
    kept = [i for i in range(9) if i not in (2, 5)]
    assert batch["image_id"].tolist() == [1000 + i for i in kept]
    for row, i in enumerate(kept):  # the images moved over the holes stay with their boxes
        assert torch.equal(
            batch["images"][row], torch.from_numpy(letterbox_image(load_image(ds.images[i].path)[0], SIZE))
        )
        np.testing.assert_allclose(
            batch["boxes_xyxy"][row, 0] / batch["scale"][row], ds.images[i].boxes_xyxy[0], atol=1e-3
        )


def test_bad_image_without_skip_raises_and_leaves_nothing(tmp_path):
    ds = _source_dataset(tmp_path / "img", 6, bad={4})
    with pytest.raises(OnedetError, match=r"img4\.png"):
        prepare([ds], tmp_path / "store", image_size=SIZE, workers=2, progress=False)
    assert list((tmp_path / "store").iterdir()) == []  # no split folder, no temporary folder
    with pytest.raises(OnedetError, match=r"no such store|not a onedet store"):
        Store(tmp_path / "store" / "train")


_KILLED_PREPARE = """
import sys, time
from pathlib import Path
import onedet.data.prepare as P
from test_prepare import _source_dataset

decode, flag = P._decode, Path(sys.argv[2])
def slow_decode(task):
    if task[0] == 3:
        flag.write_text("ok")
        time.sleep(60)  # killed here, half-way through the split
    return decode(task)
P._decode = slow_decode
P.prepare([_source_dataset(Path(sys.argv[1]) / "img", 6)], Path(sys.argv[1]) / "store", image_size=64, workers=1,
          progress=False)
"""


def test_killed_prepare_leaves_no_loadable_store_and_rerun_succeeds(tmp_path):
    flag = tmp_path / "flag"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_KILLED_PREPARE), str(tmp_path), str(flag)], env=env)
    try:
        deadline = time.monotonic() + 120
        while not flag.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert flag.exists(), "the prepare subprocess did not reach its fourth image"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    leftovers = [p.name for p in (tmp_path / "store").iterdir()]
    assert leftovers == [f".train.tmp-{proc.pid}"]  # a partial split, under a name nothing opens
    with pytest.raises(OnedetError):
        Store(tmp_path / "store" / "train")
    with pytest.raises(OnedetError):
        summarize(tmp_path / "store")
    prepare([_source_dataset(tmp_path / "img", 6)], tmp_path / "store", image_size=SIZE, workers=1, progress=False)
    assert [p.name for p in (tmp_path / "store").iterdir()] == ["train"]  # the dead run's leftovers removed
    assert len(Store(tmp_path / "store" / "train")) == 6


def test_rerun_replaces_store_and_refuses_foreign_folder(tmp_path):
    prepare([_source_dataset(tmp_path / "a", 3)], tmp_path / "store", image_size=SIZE, workers=1, progress=False)
    prepare([_source_dataset(tmp_path / "b", 5)], tmp_path / "store", image_size=SIZE, workers=1, progress=False)
    assert len(Store(tmp_path / "store" / "train")) == 5
    (tmp_path / "other" / "train").mkdir(parents=True)
    (tmp_path / "other" / "train" / "notes.txt").write_text("mine")
    with pytest.raises(OnedetError, match="not a onedet store"):
        prepare([_source_dataset(tmp_path / "a", 3)], tmp_path / "other", image_size=SIZE, workers=1, progress=False)
    assert (tmp_path / "other" / "train" / "notes.txt").read_text() == "mine"


# --- layouts --------------------------------------------------------------------------------------------------


def test_compact_layout_reads_back_raw_images_within_jpeg_tolerance(tmp_path):
    ds = _source_dataset(tmp_path / "img", 7)
    for layout in ("raw", "compact"):
        prepare([ds], tmp_path / layout, image_size=SIZE, workers=2, layout=layout, progress=False)
    raw, compact = Store(tmp_path / "raw" / "train"), Store(tmp_path / "compact" / "train")
    assert compact.layout == "compact" and compact.meta["layout"] == "compact"
    idx = np.array([6, 0, 3])
    a, b = raw.read_batch(idx), compact.read_batch(idx)
    assert b["images"].shape == a["images"].shape == (3, 3, SIZE, SIZE) and b["images"].dtype == torch.uint8
    diff = (a["images"].float() - b["images"].float()).abs()
    psnr = 10 * torch.log10(255**2 / (diff**2).mean())
    assert diff.mean() < 3 and psnr > 30  # JPEG quality 95 (4:2:0 chroma: the largest errors sit on colour edges)
    for key in ("boxes_xyxy", "labels", "valid", "orig_size", "scale", "image_id", "index"):
        assert torch.equal(a[key], b[key]), key


def _mapped_file_kib() -> int:
    """Pages of files this process has mapped and holds resident (RssFile + RssShmem: /tmp may be tmpfs), KiB."""
    rss = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return sum(int(rss[key].split()[0]) for key in ("RssFile", "RssShmem"))


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads the resident set from /proc (Linux)")
def test_raw_worker_does_not_keep_the_pixels_it_writes_resident(tmp_path):
    """A decoding worker's memory must not grow with the store: written through a memmap, every page it wrote
    stayed in its RSS (10k images at 320 px: 2 GB per worker, BENCHMARKS.md "Store scale")."""
    import onedet.data.prepare as P

    size, n = 320, 100  # 100 x 300 KB written
    ds = _source_dataset(tmp_path / "img", 4)
    images_file, shape = tmp_path / "images.memmap", (n, 3, size, size)
    np.memmap(images_file, dtype=np.uint8, mode="w+", shape=shape).flush()  # sparse, as prepare makes it
    P._init_worker(size, "raw", str(images_file))
    try:
        assert P._decode((0, str(ds.images[0].path))).error is None  # first call: code and libraries paged in
        before = _mapped_file_kib()
        for slot in range(1, n):
            assert P._decode((slot, str(ds.images[slot % 4].path))).error is None
        grown_kib = _mapped_file_kib() - before
    finally:
        P._worker.clear()
    assert grown_kib * 1024 < 0.2 * n * 3 * size * size
    written = np.memmap(images_file, dtype=np.uint8, mode="r", shape=shape)
    for slot in (0, 1, n - 1):  # the pixels are in their slots all the same
        expected = letterbox_image(load_image(ds.images[slot % 4].path)[0], size)
        assert np.array_equal(written[slot], expected), slot


def test_prepare_keeps_little_per_image_in_memory(tmp_path):
    """prepare's own memory must not grow with the split by more than a few hundred bytes per image (the files
    list of meta.json): it used to keep each image's targets (four arrays) and its task until the end, ~1 KB per
    image, ~1.7 GB at Objects365's 1.7M images (BENCHMARKS.md "Store scale")."""
    import tracemalloc

    from onedet.data.prepare import write_split

    Image.fromarray(_smooth_image(np.random.default_rng(0), 40, 40)).save(tmp_path / "a.jpg")
    jpeg = (tmp_path / "a.jpg").read_bytes()
    box, label = np.array([[1, 1, 20, 20], [5, 5, 30, 30]], np.float32), np.array([0, 1])

    def peak_bytes(n: int) -> int:
        for i in range(n):
            (tmp_path / f"{i:05d}.jpg").write_bytes(jpeg)
        images = [SourceImage(tmp_path / f"{i:05d}.jpg", box, label, size_hw=(40, 40)) for i in range(n)]
        ds = SourceDataset("train", "coco", CLASSES, COCO_IDS, images)
        tracemalloc.start()  # the dataset itself is the caller's, not counted
        try:
            write_split(ds, tmp_path / f"out{n}" / "train", image_size=32, workers=1, layout="raw", progress=False)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    peak_bytes(100)  # first call: lazy imports and caches
    small, large = peak_bytes(300), peak_bytes(1500)
    assert (large - small) / 1200 < 500, (small, large)


# --- the command line -----------------------------------------------------------------------------------------


def test_cli_prepare_and_info_json(tmp_path, capsys):
    truth = write_dataset(tmp_path / "src", "coco")
    out = tmp_path / "store"
    args = ["prepare", str(tmp_path / "src"), "--out", str(out), "--image-size", str(SIZE), "--workers", "1"]
    assert main(args) == 0
    assert "store written" in capsys.readouterr().out
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert sorted(info) == ["train", "val"]
    for split, items in truth.items():
        s = info[split]
        assert {"images", "boxes", "classes", "report", "per_class"} <= set(s)
        assert s["images"] == len(items) and s["boxes"] == sum(len(b) for _, b, _ in items)
        assert s["classes"] == CLASSES
        labels = np.concatenate([lab for _, _, lab in items])
        assert s["per_class"] == {c: int((labels == k).sum()) for k, c in enumerate(CLASSES)}
        assert isinstance(s["report"], dict)
    assert main(["info", str(out / "train")]) == 0
    assert "train: 3 images" in capsys.readouterr().out
    assert main(["info", str(tmp_path / "nothing")]) == 2
    assert "no such store" in capsys.readouterr().err


# --- real datasets --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["bccd", "aquarium", "coco128_coco"])
def test_real_dataset_round_trip(shared_data, tmp_path, name):
    """The readers' boxes (a dozen images of each split) come back from the store within half a pixel."""
    from onedet.data.formats import read_dataset

    datasets = read_dataset(shared_data / name)[:2]
    for d in datasets:  # a few images, and a few with crowd / difficult regions when the split has them
        d.images = d.images[:8] + [im for im in d.images[8:] if len(im.crowd_boxes_xyxy)][:4]
    prepare(datasets, tmp_path / "store", image_size=160, workers=2, progress=False)
    for d in datasets:
        store = Store(tmp_path / "store" / d.name)
        assert store.classes == d.classes and len(store) == len(d.images)
        batch = store.read_batch(np.arange(len(store)))
        for i, image in enumerate(d.images):
            n = len(image.boxes_xyxy)
            assert int(batch["valid"][i].sum()) == n
            back = (batch["boxes_xyxy"][i, :n].double() / batch["scale"][i].double()).numpy()
            np.testing.assert_allclose(back, image.boxes_xyxy, atol=0.5)
            assert batch["labels"][i, :n].tolist() == list(image.labels)
            assert max(batch["orig_size"][i].tolist()) * batch["scale"][i].item() == pytest.approx(160)
            nc = len(image.crowd_boxes_xyxy)  # COCO iscrowd / VOC difficult: kept apart, as ignore regions
            assert int(batch["crowd_valid"][i].sum()) == nc
            crowd = (batch["crowd_boxes_xyxy"][i, :nc].double() / batch["scale"][i].double()).numpy()
            np.testing.assert_allclose(crowd, image.crowd_boxes_xyxy.reshape(-1, 4), atol=0.5)
            assert batch["crowd_labels"][i, :nc].tolist() == list(image.crowd_labels)  # their own class
