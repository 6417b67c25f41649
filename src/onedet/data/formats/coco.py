"""COCO instances JSON: one JSON per split, images in a folder next to the annotations.

Split names come from the file name (`instances_train2017.json` -> "train") or, for Roboflow's
`train/_annotations.coco.json`, from the folder. Category ids (non-contiguous, 1..90 in COCO) map to
contiguous labels in sorted id order; every category declared in `categories` is kept, used or not, so
`category_ids[label]` gives back the dataset's own ids. `iscrowd=1` boxes become `crowd_boxes_xyxy` with
their label in `crowd_labels` (ignore regions for evaluation, for their own class only, as COCOeval does),
never training boxes. A crowd box of an undeclared category is dropped and counted
("crowd_unknown_category"): COCOeval evaluates only declared categories, so it would ignore nothing. COCO's
bbox is `[x, y, w, h]` in continuous pixels.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlparse

import numpy as np

from onedet.data.formats.common import clip_boxes, empty_boxes, normalize_split_name
from onedet.data.images import image_size
from onedet.data.records import Report, SourceDataset, SourceImage
from onedet.errors import OnedetError

_GENERIC_STEMS = {"_annotations.coco", "_annotations", "annotations", "coco", "labels", "instances"}
_SNIFF_BYTES = 1 << 20


def looks_like_coco(path: Path) -> bool:
    """True when a JSON file has COCO's top-level `images` (and `annotations` or `categories`) keys.

    Only the first MiB is read: COCO files put `images` before the (large) `annotations` list.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(_SNIFF_BYTES)
    except OSError:
        return False
    return b'"images"' in head and (b'"annotations"' in head or b'"categories"' in head or len(head) == _SNIFF_BYTES)


def find_coco_files(source: Path) -> list[Path]:
    """COCO JSON files of a dataset: the file itself, or those in the folder, `annotations/`, or one level down.

    When `instances_*.json` files exist, the others (captions, keypoints, ...) are ignored.
    """
    if source.is_file():
        return [source]
    candidates = sorted({*source.glob("*.json"), *source.glob("*/*.json")})
    # An `instances_*.json` is one by its name: sniffing would silently drop a damaged one (cut short, say) and
    # with it a split; read, it fails with an error naming it.
    found = [p for p in candidates if p.name.startswith("instances_") or looks_like_coco(p)]
    instances = [p for p in found if p.name.startswith("instances_")]
    return instances or found


def split_name(json_path: Path) -> str:
    stem = json_path.name.removesuffix(".json")
    if stem.lower() in _GENERIC_STEMS:
        return normalize_split_name(json_path.parent.name)
    return normalize_split_name(stem)


def _image_root(json_path: Path, images: list[dict]) -> Path:
    """The folder that `file_name`s are relative to: the first candidate holding most of the first images."""
    here, up = json_path.parent, json_path.parent.parent
    folder = json_path.name.removesuffix(".json").removeprefix("instances_")  # "train2017"
    candidates = [here, up / folder, here / folder, up / "images" / folder, up / "images", here / "images"]
    url = images[0].get("coco_url") or images[0].get("flickr_url") if images else None
    if isinstance(url, str) and len(parts := Path(urlparse(url).path).parts) >= 2:
        candidates.append(up / parts[-2])  # COCO's own urls name the folder: .../train2017/x.jpg
    candidates += [up, *sorted(p for p in up.iterdir() if p.is_dir())]
    probe = [str(im.get("file_name", "")) for im in images[:8]]
    for root in dict.fromkeys(candidates):
        if sum((root / name).is_file() for name in probe) * 2 > len(probe):
            return root
    tried = ", ".join(str(c) for c in dict.fromkeys(candidates))
    raise OnedetError(f"{json_path}: cannot find its images (e.g. {probe[0] if probe else '?'}); looked in {tried}")


def _categories(json_path: Path, data: dict) -> tuple[list[str], list[int]]:
    cats = data.get("categories")
    if not isinstance(cats, list) or not cats:
        raise OnedetError(f"{json_path}: no 'categories' list; a COCO instances file declares its classes there")
    by_id: dict[int, str] = {}
    for c in cats:
        cid = c.get("id")
        if not isinstance(cid, int) or cid in by_id:
            raise OnedetError(f"{json_path}: category {c!r} has a missing or repeated integer id")
        by_id[cid] = str(c.get("name", f"class{cid}"))
    ids = sorted(by_id)
    return [by_id[i] for i in ids], ids


class _Images(NamedTuple):
    """The `images` table of a COCO file: one row per entry, in file order."""

    row_of: dict[int, int]
    """image id -> row"""
    paths: list[Path]
    sizes: np.ndarray
    """float64 [N, 2] (h, w): declared, or read from the header when undeclared"""
    present: np.ndarray
    """bool [N]: the image file exists"""


class _Annotations(NamedTuple):
    """The usable annotations of a COCO file as flat arrays, one entry per box."""

    owner: np.ndarray
    """int64 [A]: the row of the box's image"""
    boxes_xyxy: np.ndarray
    """float64 [A, 4], as annotated (not yet clipped)"""
    labels: np.ndarray
    """int64 [A], contiguous"""
    crowd: np.ndarray
    """bool [A]: iscrowd"""
    annotated: np.ndarray
    """bool [N]: the image has at least one annotation entry, usable or not"""


def _load_json(json_path: Path) -> dict:
    try:
        with open(json_path, "rb") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise OnedetError(f"{json_path}: not a readable JSON file ({e})") from e
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise OnedetError(f"{json_path}: not a COCO instances file (expected top-level 'images', 'annotations')")
    return data


def _label_mapping(
    json_path: Path, data: dict, reference: tuple[list[str], list[int]] | None
) -> tuple[list[str], list[int]]:
    """(classes, category_ids) of this file, or of `reference` when this file's categories are a subset of it."""
    classes, category_ids = _categories(json_path, data)
    if reference is not None:
        ref = dict(zip(reference[1], reference[0]))
        if any(ref.get(cid) != name for cid, name in zip(category_ids, classes)):
            raise OnedetError(f"{json_path}: its categories differ from the other split's; all splits must share them")
        classes, category_ids = reference
    return classes, category_ids


def _read_images(json_path: Path, entries: list, report: Report) -> _Images:
    """Rows of the `images` table; missing files counted. Their row indexes the per-box arrays."""
    root = _image_root(json_path, entries)
    row_of: dict[int, int] = {}
    paths: list[Path] = []
    sizes = np.zeros((len(entries), 2), np.float64)
    present = np.zeros(len(entries), bool)
    for row, im in enumerate(entries):
        image_id, name = im.get("id"), im.get("file_name")
        if not isinstance(image_id, int) or image_id in row_of or not isinstance(name, str):
            raise OnedetError(f"{json_path}: image entry {im!r} needs a unique integer 'id' and a 'file_name'")
        row_of[image_id] = row
        paths.append(path := root / name)
        present[row] = path.is_file()
        if not present[row]:
            report.add("missing_images", path)
            continue
        w, h = im.get("width"), im.get("height")
        declared = isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0
        sizes[row] = (h, w) if declared else image_size(path)  # undeclared: read the header (cheap)
    if entries and not present.any():
        raise OnedetError(f"{json_path}: none of its {len(entries)} images exist under {root}")
    return _Images(row_of, paths, sizes, present)


def _read_annotations(
    json_path: Path, data: dict, images: _Images, label_of: dict[int, int], report: Report
) -> _Annotations:
    """One Python pass into flat lists (clipping and counting are then vectorised over all boxes, which keeps a
    COCO-sized file, ~1M boxes, to seconds); entries without an image or a bbox counted."""
    owner, xywh, labels, crowd = [], [], [], []
    annotated = np.zeros(len(images.paths), bool)
    for ann in data.get("annotations", []):
        row, bbox = images.row_of.get(ann.get("image_id")), ann.get("bbox")
        if row is None:
            report.add("annotations_without_image", json_path)
            continue
        annotated[row] = True
        if not (isinstance(bbox, list) and len(bbox) == 4):  # values are checked below, all at once
            report.add("annotations_without_bbox", json_path)
            continue
        is_crowd = bool(ann.get("iscrowd", 0))
        label = label_of.get(ann.get("category_id"), -1)
        if label < 0:
            if not is_crowd:
                raise OnedetError(
                    f"{json_path}: annotation id {ann.get('id')} has category_id {ann.get('category_id')!r}, "
                    f"not among the declared categories {sorted(label_of)}"
                )
            if images.present[row]:
                report.add("crowd_unknown_category", images.paths[row])
            continue
        owner.append(row)
        xywh.append(bbox)
        labels.append(label)
        crowd.append(is_crowd)
    try:
        boxes = np.array(xywh, np.float64).reshape(-1, 4)
    except (TypeError, ValueError) as e:
        raise OnedetError(f"{json_path}: an annotation's bbox is not four finite numbers ({e})") from e
    if not np.isfinite(boxes).all():
        bad = owner[int(np.flatnonzero(~np.isfinite(boxes).all(axis=1))[0])]
        raise OnedetError(f"{json_path}: a bbox of image {data['images'][bad].get('id')} is not four finite numbers")
    boxes[:, 2:] += boxes[:, :2]
    return _Annotations(np.array(owner, np.int64), boxes, np.array(labels, np.int64), np.array(crowd, bool), annotated)


def _clip_and_count(images: _Images, anns: _Annotations, report: Report) -> tuple[np.ndarray, np.ndarray]:
    """Boxes clipped to their image (float32 [A, 4]) and `keep` [A] (area left); fixes counted per image.

    Fixes on images that are missing are not counted: the image is skipped anyway.
    """
    clipped, keep, moved = clip_boxes(anns.boxes_xyxy, images.sizes[anns.owner])
    live, crowd, n = images.present[anns.owner], anns.crowd, len(images.paths)
    for kind, mask in (
        ("zero_area_boxes", ~keep & ~crowd),
        ("clipped_boxes", moved & keep & ~crowd),
        ("crowd_zero_area_boxes", ~keep & crowd),
        ("crowd_clipped_boxes", moved & keep & crowd),
    ):
        counts = np.bincount(anns.owner[mask & live], minlength=n)
        for row in np.flatnonzero(counts):
            report.add(kind, images.paths[row], int(counts[row]))
    return clipped.astype(np.float32), keep


def _records(
    entries: list, images: _Images, anns: _Annotations, clipped: np.ndarray, keep: np.ndarray, report: Report
) -> list[SourceImage]:
    """One `SourceImage` per present image, its boxes and crowd regions in file order."""
    n = len(images.paths)

    def grouped(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Indices of the selected boxes sorted by image (stable: file order), and each image's [start, end)."""
        idx = np.flatnonzero(mask)
        idx = idx[np.argsort(anns.owner[idx], kind="stable")]
        return idx, np.searchsorted(anns.owner[idx], np.arange(n + 1))

    has_boxes = np.bincount(anns.owner[~anns.crowd], minlength=n) > 0
    train_idx, train_at = grouped(keep & ~anns.crowd)
    crowd_idx, crowd_at = grouped(keep & anns.crowd)
    records: list[SourceImage] = []
    for row, im in enumerate(entries):
        if not images.present[row]:
            continue
        if not has_boxes[row]:
            report.add("background_images", images.paths[row])
        sel, crowd_sel = train_idx[train_at[row] : train_at[row + 1]], crowd_idx[crowd_at[row] : crowd_at[row + 1]]
        size_hw = (int(images.sizes[row, 0]), int(images.sizes[row, 1]))
        cb = clipped[crowd_sel] if len(crowd_sel) else empty_boxes()
        record = SourceImage(images.paths[row], clipped[sel], anns.labels[sel], cb, im["id"], size_hw)
        record.crowd_labels = anns.labels[crowd_sel]
        record.labeled = bool(anns.annotated[row])
        records.append(record)
    return records


def read_coco_file(json_path: Path, reference: tuple[list[str], list[int]] | None = None) -> SourceDataset:
    """One split from one COCO instances JSON (boxes clipped to the declared image size, fixes counted).

    `reference` is another split's (classes, category_ids): this file's categories must be a subset of them
    (same names), so that every split shares one label mapping.
    """
    data = _load_json(json_path)
    classes, category_ids = _label_mapping(json_path, data, reference)
    label_of = {cid: label for label, cid in enumerate(category_ids)}
    report = Report()
    images = _read_images(json_path, data["images"], report)
    anns = _read_annotations(json_path, data, images, label_of, report)
    clipped, keep = _clip_and_count(images, anns, report)
    records = _records(data["images"], images, anns, clipped, keep, report)
    return SourceDataset(split_name(json_path), "coco", classes, category_ids, records, report, [str(json_path)])


def read_coco(source: Path) -> list[SourceDataset]:
    """All splits of a COCO dataset (a folder of instances JSONs, or one JSON file)."""
    files = find_coco_files(source)
    if not files:
        raise OnedetError(
            f"{source}: no COCO instances JSON found (looked for *.json with 'images' and "
            "'annotations' in the folder, annotations/, and one level down)"
        )
    splits = [read_coco_file(files[0])]
    splits += [read_coco_file(p, (splits[0].classes, splits[0].category_ids)) for p in files[1:]]
    names = [s.name for s in splits]
    if len(set(names)) != len(names):
        raise OnedetError(
            f"{source}: several JSON files map to the same split name: "
            + ", ".join(f"{p.name} -> {n}" for p, n in zip(files, names))
        )
    return splits
