"""Pascal VOC XML: `Annotations/*.xml`, `JPEGImages/`, splits from `ImageSets/Main/{train,val,test}.txt`.

`trainval.txt` is the union of `train` and `val`, not a split of its own: it is used (as "train") only when
neither `train.txt` nor `val.txt` exists. Without `ImageSets/Main`, every annotation is one "train" split.

VOC coordinates are 1-based inclusive integer pixel indices: a box over pixel columns 1..10 is
`xmin=1, xmax=10`. In onedet's continuous coordinates (column 0 spans 0..1) that is `x0 = xmin - 1,
x1 = xmax` (likewise for y). A box with `xmax <= xmin` or `ymax <= ymin` has no extent as drawn (a click
rather than a drag) and is dropped as a zero-area box, even though the 1-based reading would make it one
pixel wide. `difficult=1` objects become ignore regions (`crowd_boxes_xyxy`, their class in `crowd_labels`),
as in VOC's own evaluation, where a difficult object is ignored only for its own class.
Class names are the sorted set of names found in the annotations of all splits.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from onedet.data.formats.common import clean_boxes, empty_boxes, normalize_split_name
from onedet.data.images import IMAGE_SUFFIXES, image_size
from onedet.data.records import Report, SourceDataset, SourceImage
from onedet.errors import OnedetError


def _subdirs(folder: Path) -> list[Path]:
    # os.scandir knows directories from the listing itself: cheap even next to a folder of a million images.
    with os.scandir(folder) as entries:
        return sorted(Path(e.path) for e in entries if e.is_dir() and not e.name.startswith("."))


def find_voc_root(source: Path) -> Path | None:
    """The folder holding `Annotations/` and `JPEGImages/`: `source`, or one or two levels down (VOCdevkit)."""
    if not source.is_dir():
        return None
    level1 = _subdirs(source)
    level2 = [d for parent in level1 if parent.name not in ("Annotations", "JPEGImages") for d in _subdirs(parent)]
    for candidates in ([source], level1, level2):
        roots = [p for p in candidates if (p / "Annotations").is_dir() and (p / "JPEGImages").is_dir()]
        if len(roots) > 1:
            raise OnedetError(f"{source}: several VOC folders ({', '.join(map(str, roots))}); pass the one to read")
        if roots:
            return roots[0]
    return None


def _split_lists(root: Path) -> dict[str, list[str]]:
    main = root / "ImageSets" / "Main"
    files = {p.stem: p for p in sorted(main.glob("*.txt")) if "_" not in p.stem} if main.is_dir() else {}
    if "train" in files or "val" in files:
        files.pop("trainval", None)  # the union of train and val
    elif "trainval" in files:
        files["train"] = files.pop("trainval")
    splits = {}
    for stem, path in files.items():
        splits[normalize_split_name(stem)] = [ln.split()[0] for ln in path.read_text().splitlines() if ln.strip()]
    if not splits:
        splits["train"] = sorted(p.stem for p in (root / "Annotations").glob("*.xml"))
    return splits


class _Parsed:
    """One XML file's contents, before class names are known."""

    __slots__ = ("boxes", "difficult", "names", "size_hw", "xml")

    def __init__(self, xml: Path, size_hw: tuple[int, int] | None, names: list[str], boxes, difficult) -> None:
        self.xml, self.size_hw, self.names, self.boxes, self.difficult = xml, size_hw, names, boxes, difficult


def _number(bndbox: ET.Element | None, tag: str, xml: Path, index: int) -> float:
    text = bndbox.findtext(tag) if bndbox is not None else None
    try:
        return float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError) as e:
        raise OnedetError(f"{xml}: object {index} has no numeric bndbox/{tag} (got {text!r})") from e


def parse_xml(xml: Path) -> tuple[_Parsed, str | None]:
    """Boxes in continuous pixels (degenerate boxes made zero-width for `clean_boxes` to drop and count)."""
    try:
        tree = ET.parse(xml).getroot()
    except (OSError, ET.ParseError) as e:
        raise OnedetError(f"{xml}: not a readable VOC XML file ({e})") from e
    w, h = (tree.findtext(f"size/{k}") for k in ("width", "height"))
    try:
        size_hw = (int(float(h)), int(float(w))) if w and h and float(w) > 0 and float(h) > 0 else None
    except ValueError:
        size_hw = None
    names, boxes, difficult = [], [], []
    for i, obj in enumerate(tree.iter("object")):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise OnedetError(f"{xml}: object {i} has no <name>")
        bndbox = obj.find("bndbox")
        x0, y0, x1, y1 = (_number(bndbox, t, xml, i) for t in ("xmin", "ymin", "xmax", "ymax"))
        if x1 <= x0 or y1 <= y0:
            boxes.append([x0, y0, x0, y0])  # no extent as drawn
        else:
            boxes.append([x0 - 1, y0 - 1, x1, y1])  # 1-based inclusive -> continuous
        names.append(name)
        difficult.append((obj.findtext("difficult") or "0").strip() in ("1", "true"))
    return _Parsed(xml, size_hw, names, np.array(boxes, np.float64).reshape(-1, 4), np.array(difficult, bool)), (
        tree.findtext("filename")
    )


def _image_file(root: Path, stem: str, filename: str | None) -> Path | None:
    if filename and (p := root / "JPEGImages" / filename).is_file():
        return p
    for suffix in (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG", *sorted(IMAGE_SUFFIXES)):
        if (p := root / "JPEGImages" / f"{stem}{suffix}").is_file():
            return p
    return None


def read_voc(source: Path) -> list[SourceDataset]:
    """All splits of a Pascal VOC dataset."""
    root = find_voc_root(source)
    if root is None:
        raise OnedetError(f"{source}: not a Pascal VOC folder (expected Annotations/ and JPEGImages/)")
    parsed: dict[str, list[tuple[str, _Parsed, Path]]] = {}
    reports: dict[str, Report] = {}
    for split, stems in _split_lists(root).items():
        reports[split] = report = Report()
        parsed[split] = []
        for stem in stems:
            xml = root / "Annotations" / f"{stem}.xml"
            if not xml.is_file():
                report.add("missing_annotation_files", xml)
                continue
            item, filename = parse_xml(xml)
            image = _image_file(root, stem, filename)
            if image is None:
                report.add("missing_images", root / "JPEGImages" / (filename or f"{stem}.jpg"))
                continue
            parsed[split].append((stem, item, image))
    classes = sorted({n for items in parsed.values() for _, item, _ in items for n in item.names})
    label_of = {n: i for i, n in enumerate(classes)}
    datasets = []
    for split, items in parsed.items():
        report, images = reports[split], []
        for _, item, image in items:
            size_hw = item.size_hw or image_size(image)
            labels = np.array([label_of[n] for n in item.names], np.int64)
            if not len(labels):
                report.add("background_images", image)
            if item.difficult.any():
                report.add("difficult_as_ignore", item.xml, int(item.difficult.sum()))
            hard = item.difficult
            boxes, kept = clean_boxes(item.boxes[~hard], labels[~hard], size_hw, report, item.xml)
            crowd, crowd_labels = clean_boxes(
                item.boxes[hard], labels[hard], size_hw, report, item.xml, kind_prefix="crowd_"
            )
            crowd = crowd if len(crowd) else empty_boxes()
            images.append(SourceImage(image, boxes, kept, crowd, size_hw=size_hw, crowd_labels=crowd_labels))
        datasets.append(SourceDataset(split, "voc", classes, list(range(len(classes))), images, report))
    return datasets
