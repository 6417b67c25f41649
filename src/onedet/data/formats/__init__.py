"""Reading a dataset's annotations: detecting its format (COCO, YOLO, VOC) and its splits.

`read_dataset(source)` returns one `SourceDataset` per split, boxes in pixels of the images as displayed,
already clipped, with degenerate boxes dropped and every fix counted in the split's report. Only annotation
files and image headers are read; pixels are decoded later by prepare. Split names are normalised
("valid" -> "val", "train2017" -> "train"). A dataset with a single split gets a deterministic held-out
"val" split (`holdout_fraction` of its images, chosen by `seed`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from onedet.data.formats.coco import find_coco_files, read_coco
from onedet.data.formats.common import list_images
from onedet.data.formats.voc import find_voc_layouts, read_voc
from onedet.data.formats.yolo import find_yaml, read_yolo
from onedet.data.images import IMAGE_SUFFIXES
from onedet.data.records import Report, SourceDataset, SourceImage
from onedet.errors import OnedetError

FORMATS = ("coco", "yolo", "voc")
LAYOUTS = (
    "COCO: instances JSON files (e.g. annotations/instances_train2017.json with images in train2017/); "
    "YOLO: data.yaml and/or {train,valid,test}/{images,labels} or images/{train,val} + labels/{train,val}; "
    "Pascal VOC: Annotations/ + JPEGImages/ (+ ImageSets/Main/{train,val,test}.txt), or any folder of VOC XML "
    "files (e.g. annotations/, annots/) beside a folder of images, or {train,valid,test}/ of images and their XML"
)
_READERS = {"coco": read_coco, "yolo": read_yolo, "voc": read_voc}


def _has_yolo_labels(source: Path) -> bool:
    return any(p.is_dir() for pattern in ("labels", "*/labels") for p in source.glob(pattern))


def _only_subfolder(source: Path) -> Path | None:
    """The single sub-folder of a folder that holds nothing else recognisable (a dataset unzipped one level deep)."""
    subdirs = [p for p in source.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return subdirs[0] if len(subdirs) == 1 else None


def _split_order(dataset: SourceDataset) -> tuple[int, str]:
    return ({"train": 0, "val": 1, "test": 2}.get(dataset.name, 3), dataset.name)


def detect_format(source: Path) -> str:
    """ "coco", "yolo" or "voc" from the files present; `OnedetError` listing the expected layouts otherwise."""
    source = Path(source)
    if not source.exists():
        raise OnedetError(f"{source}: dataset not found")
    if source.is_file():
        if source.suffix == ".json":
            return "coco"
        if source.suffix in (".yaml", ".yml"):
            return "yolo"
        raise OnedetError(f"{source}: expected a dataset folder, a COCO .json or a YOLO data.yaml")
    if find_voc_layouts(source):
        return "voc"
    if find_coco_files(source):
        return "coco"
    if find_yaml(source) is not None or _has_yolo_labels(source):
        return "yolo"
    if (inner := _only_subfolder(source)) is not None:
        return detect_format(inner)
    for present, absent in (("Annotations", "JPEGImages"), ("JPEGImages", "Annotations")):
        if (source / present).is_dir():
            raise OnedetError(f"{source}: has {present}/ but no {absent}/; Pascal VOC needs both")
    raise OnedetError(f"{source}: unrecognised dataset layout; expected one of: {LAYOUTS}")


def _recognised(source: Path, format: str) -> bool:
    if format == "voc":
        return bool(find_voc_layouts(source))
    if format == "coco":
        return bool(find_coco_files(source))
    return find_yaml(source) is not None or _has_yolo_labels(source)


def split_report(report: Report, taken: Sequence[SourceImage], kept: Sequence[SourceImage]) -> tuple[Report, Report]:
    """Split what a reader reported between the images `taken` away and the images `kept`: (the taken images'
    report, the rest's). An entry is a taken image's when it names that image, or the label file that shares its
    stem (a YOLO `.txt`, a VOC `.xml`) and no kept image has that stem; dataset-level entries (a COCO JSON,
    labels without an image, images that were skipped) stay with the rest. `report` is not changed."""
    kept_stems = {im.path.stem for im in kept}
    paths = {str(im.path) for im in taken}
    stems = {im.path.stem for im in taken} - kept_stems

    def owned(file: str) -> bool:
        path = Path(file)
        return file in paths or (path.suffix.lower() in (".txt", ".xml") and path.stem in stems)

    rest = Report()
    rest.merge(report)
    return rest.take(owned), rest


def hold_out_val(dataset: SourceDataset, holdout_fraction: float = 0.1, seed: int = 0) -> list[SourceDataset]:
    """Split one dataset into what remains and a "val" split of `round(fraction * N)` (at least 1) images.

    A fraction of 0 (or a dataset of one image) returns the dataset unchanged. The choice depends only on
    `seed` and the number of images; both splits keep the source order. The val split's report says what was
    held out (kind "held_out_val") and what the reader fixed in the held-out images (`split_report`); the rest
    split's report keeps everything else. A dataset named "val" keeps the rest as "train".
    """
    n = len(dataset.images)
    if n < 2 or holdout_fraction <= 0:
        return [dataset]
    n_val = min(n - 1, max(1, round(holdout_fraction * n)))
    is_val = np.zeros(n, bool)
    is_val[np.random.default_rng(seed).permutation(n)[:n_val]] = True
    rest_name = "train" if dataset.name == "val" else dataset.name
    keep = [im for im, held in zip(dataset.images, is_val) if not held]
    val = [im for im, held in zip(dataset.images, is_val) if held]
    val_report, rest_report = split_report(dataset.report, val, keep)
    for image in val:
        val_report.add("held_out_val", image.path)
    val_report.note("held_out_val", f"held out {n_val} images of {dataset.name} as val")
    searched = list(dataset.searched)
    return [
        SourceDataset(rest_name, dataset.format, dataset.classes, dataset.category_ids, keep, rest_report, searched),
        SourceDataset("val", dataset.format, dataset.classes, dataset.category_ids, val, val_report, searched),
    ]


def read_dataset(
    source: Path, format: str = "auto", holdout_fraction: float = 0.1, seed: int = 0
) -> list[SourceDataset]:
    """One `SourceDataset` per split of the dataset at `source` (a folder, a COCO JSON or a YOLO yaml)."""
    source = Path(source)
    if format == "auto":
        format = detect_format(source)
        while source.is_dir() and _recognised(source, format) is False and (inner := _only_subfolder(source)):
            source = inner
    if format not in _READERS:
        raise OnedetError(f"unknown dataset format {format!r}; expected auto, {', '.join(FORMATS)}")
    if not source.exists():
        raise OnedetError(f"{source}: dataset not found")
    splits = sorted(_READERS[format](source), key=_split_order)
    if not splits or not any(s.images for s in splits):
        raise OnedetError(f"{source}: no images found as {format}; expected one of: {LAYOUTS}")
    if len(splits) == 1:
        splits = hold_out_val(splits[0], holdout_fraction, seed)
    return splits


def read_unlabeled(source: Path) -> SourceDataset:
    """Every image under the folder `source` (recursively, annotations ignored) as one split "unlabeled", no boxes."""
    source = Path(source)
    if not source.is_dir():
        raise OnedetError(f"{source}: unlabeled images are read from a folder")
    report = Report()
    paths = list_images(source, report)
    if not paths:
        raise OnedetError(f"{source}: no image files found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    none = np.zeros((0, 4), np.float32)
    images = [SourceImage(p, none, np.zeros(0, np.int64), labeled=False) for p in paths]
    return SourceDataset("unlabeled", "images", [], [], images, report, [str(source)])
