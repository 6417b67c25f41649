"""Pascal VOC XML: a folder of `*.xml` annotations beside a folder of images, splits from `ImageSets/Main`.

Two layouts, looked for in this order in the folder given, one level down, and (for VOCdevkit) two levels:

- VOC's own: `Annotations/` + `JPEGImages/` (+ `ImageSets/Main/{train,val,test}.txt`);
- what exports use (labelImg, Roboflow, CVAT, Kaggle): any folder of XML files whose root is `<annotation>`
  (found by content, e.g. `annotations/`, `annots/`, `xml/`, or the images' own folder), the images in it or in
  its sibling folders (e.g. `images/`).

Several such folders at one level are the splits of one dataset when each is in its own folder named as a split
(Roboflow's `train/`, `valid/`, `test/` of images with their XML beside them, or `train/annotations` +
`train/images`, ...): each split is all the XMLs of its folder, its images looked for in its own folder. Other
folders side by side are ambiguous (an error asks for the one to read).

`trainval.txt` is the union of `train` and `val`, not a split of its own: it is used (as "train") only when
neither `train.txt` nor `val.txt` exists. A single split file of another name (CVAT's `default.txt`) is the
whole dataset: read as "train" (note "single_split_file"). Without `ImageSets/Main`, every annotation is one
"train" split (note "no_split_files"). From a single "train" `read_dataset` holds out a val split. Split files
may name sub-folders (CVAT: `cam1/0001` is `Annotations/cam1/0001.xml`). Each XML's image is found by its
`<filename>` (with an image suffix added when it has none; beside the XML's own sub-folder first), then by the
file name of its `<path>` (often an absolute path on the author's machine: only its last part is used), then by
the XML's stem with an image suffix, in each image folder in turn (directly, then anywhere below it); a fallback
past `<filename>` is counted ("filename_not_found").

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
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import NamedTuple

import numpy as np

from onedet.data.formats.common import clean_boxes, empty_boxes, list_images, normalize_split_name
from onedet.data.images import IMAGE_SUFFIXES, image_size
from onedet.data.records import Report, SourceDataset, SourceImage
from onedet.errors import OnedetError


def _is(entry: os.DirEntry, kind: str) -> bool:
    """`entry.is_dir()` / `is_file()`, False for a symlink the OS refuses to follow (ELOOP)."""
    try:
        return entry.is_dir() if kind == "dir" else entry.is_file()
    except OSError:
        return False


def _subdirs(folder: Path) -> list[Path]:
    # os.scandir knows directories from the listing itself: cheap even next to a folder of a million images.
    with os.scandir(folder) as entries:
        return sorted(Path(e.path) for e in entries if not e.name.startswith(".") and _is(e, "dir"))


_STANDARD = ("Annotations", "JPEGImages")
_SPLIT_FOLDERS = ("train", "val", "test")
_SNIFF_FILES = 3


class VocLayout(NamedTuple):
    """Where a VOC dataset's parts are."""

    root: Path
    """The folder that holds `ImageSets/Main` when there are split files."""
    annotations: Path
    """The folder of XML files."""
    image_dirs: tuple[Path, ...]
    """Folders an XML's image is looked for in, in order."""
    split: str | None = None
    """The split all of `annotations` is, when a folder named as a split holds it (Roboflow's `valid/`); None
    when `ImageSets/Main` (or its absence) decides."""


def _is_voc_xml(path: Path) -> bool:
    """True when an XML file's root element is `<annotation>` (only the first element is parsed)."""
    try:
        for _, element in ET.iterparse(path, events=("start",)):
            return element.tag == "annotation"
    except (OSError, ET.ParseError):
        return False
    return False


def _has_voc_xml(folder: Path) -> bool:
    """True when one of the first few `*.xml` files of `folder` is a VOC annotation."""
    sniffed = 0
    with os.scandir(folder) as entries:
        for e in entries:
            if e.name.lower().endswith(".xml") and _is(e, "file"):
                if _is_voc_xml(Path(e.path)):
                    return True
                if (sniffed := sniffed + 1) >= _SNIFF_FILES:
                    return False
    return False


def _has_images(folder: Path) -> bool:
    """True when `folder` holds an image file, directly or one level down (stops at the first one)."""
    for level in (folder, *_subdirs(folder)[:8]):
        with os.scandir(level) as entries:
            if any(Path(e.name).suffix.lower() in IMAGE_SUFFIXES and _is(e, "file") for e in entries):
                return True
    return False


def _layouts_in(folder: Path) -> list[VocLayout]:
    """The VOC layouts rooted at `folder`: VOC's own names first, else XML folders found by content."""
    if all((folder / name).is_dir() for name in _STANDARD):
        return [VocLayout(folder, folder / "Annotations", (folder / "JPEGImages",))]
    subdirs = _subdirs(folder)
    image_dirs = [d for d in subdirs if _has_images(d)]
    layouts = []
    for d in subdirs:
        if _has_voc_xml(d):
            others = [i for i in image_dirs if i != d]
            mixed = [d] if d in image_dirs else []  # labelImg saves each XML beside its image
            if others or mixed:
                layouts.append(VocLayout(folder, d, tuple(mixed + others)))
    if not layouts and _has_voc_xml(folder) and _has_images(folder):
        layouts.append(VocLayout(folder, folder, (folder,)))
    return layouts


def _as_splits(layouts: list[VocLayout]) -> list[VocLayout] | None:
    """Several layouts as the splits of one dataset, when each lies in its own folder named as a split
    (Roboflow's `train/`, `valid/`, `test/`, each of XMLs beside their images; or `train/annotations` +
    `train/images`, ...): each then looks for images in its own folder only (if it has any: else in the folders
    found beside it, e.g. `train/` and `valid/` of XMLs beside one `images/`). None otherwise."""
    splits = []
    for layout in layouts:
        for folder in (layout.annotations, layout.root):
            if (split := normalize_split_name(folder.name)) in _SPLIT_FOLDERS:
                break
        else:
            return None
        own = tuple(d for d in layout.image_dirs if d == folder or folder in d.parents)
        splits.append(VocLayout(folder, layout.annotations, own or layout.image_dirs, split))  # or a shared images/
    return splits if len({s.split for s in splits}) == len(splits) else None


def find_voc_layouts(source: Path) -> list[VocLayout]:
    """The VOC layout at `source`, or one or two levels down (VOCdevkit/VOC2007): one, or one per split folder
    (`_as_splits`); empty when there is none."""
    if not source.is_dir():
        return []
    level1 = _subdirs(source)
    level2 = [d for parent in level1 if parent.name not in _STANDARD for d in _subdirs(parent)]
    for candidates in ([source], level1, level2):
        layouts = [layout for folder in candidates for layout in _layouts_in(folder)]
        if len(layouts) > 1:
            if (splits := _as_splits(layouts)) is None:
                found = ", ".join(str(x.annotations) for x in layouts)
                raise OnedetError(f"{source}: several VOC annotation folders ({found}); pass the one to read")
            return splits
        if layouts:
            return layouts
    return []


def _is_class_list(path: Path) -> bool:
    """Whether an ImageSets/Main file is a per-class list (`dog_train.txt`: lines `ID FLAG`, FLAG -1, 0 or 1) rather
    than a split (`train.txt`, CVAT's `Subset_1.txt`: lines `ID`). Judged by the first line: a split's name may have
    an underscore too."""
    if "_" not in path.stem:
        return False
    with path.open(errors="replace") as f:
        first = next((line.split() for line in f if line.strip()), [])
    return len(first) == 2 and first[1] in ("-1", "0", "1")


def _split_lists(layout: VocLayout, report: Report) -> dict[str, list[str]]:
    if layout.split is not None:
        return {layout.split: sorted(p.stem for p in layout.annotations.glob("*.xml"))}
    main = layout.root / "ImageSets" / "Main"
    files = {p.stem: p for p in sorted(main.glob("*.txt")) if not _is_class_list(p)} if main.is_dir() else {}
    if "train" in files or "val" in files:
        files.pop("trainval", None)  # the union of train and val
    elif "trainval" in files:
        files["train"] = files.pop("trainval")
    if len(files) == 1 and normalize_split_name(next(iter(files))) not in _SPLIT_FOLDERS:
        # CVAT names its one subset "default": the whole dataset, not a split of it beside a held-out val
        (only,) = files.values()
        files = {"train": only}
        report.note("single_split_file", f"{only} is the only split file: all of it read as train, val held out")
    splits = {}
    for stem, path in files.items():
        splits[normalize_split_name(stem)] = [ln.split()[0] for ln in path.read_text().splitlines() if ln.strip()]
    if not splits:
        splits["train"] = sorted(p.stem for p in layout.annotations.glob("*.xml"))
        report.note("no_split_files", f"no ImageSets/Main/*.txt in {layout.root}: all annotations read as train")
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


def parse_xml(xml: Path) -> tuple[_Parsed, tuple[str | None, str | None]]:
    """Boxes in continuous pixels (degenerate boxes made zero-width for `clean_boxes` to drop and count), and the
    image's `<filename>` and `<path>` as written (None when absent)."""
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
    parsed = _Parsed(xml, size_hw, names, np.array(boxes, np.float64).reshape(-1, 4), np.array(difficult, bool))
    return parsed, ((tree.findtext("filename") or "").strip() or None, (tree.findtext("path") or "").strip() or None)


def _suffixed(name: str) -> list[str]:
    """`name` with each image suffix, the common ones first."""
    return [f"{name}{suffix}" for suffix in (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG", *sorted(IMAGE_SUFFIXES))]


class _ImageFinder:
    """Finds an XML's image in the layout's image folders: a direct look-up first (a stat per candidate name), a
    listing of the folders (built once, on the first miss) for images in sub-folders."""

    def __init__(self, layout: VocLayout, report: Report) -> None:
        self.dirs, self.report = layout.image_dirs, report
        self._by_name: dict[str, Path] | None = None

    def _listed(self) -> dict[str, Path]:
        if self._by_name is None:
            self._by_name = {}
            for folder in self.dirs:
                for path in list_images(folder, self.report):
                    self._by_name.setdefault(path.name, path)
        return self._by_name

    def find(self, stem: str, filename: str | None, path_text: str | None) -> Path | None:
        """`stem` is the XML's name relative to the annotation folder (`dir/img1` for CVAT's sub-folders)."""
        candidates: list[str | None] = []
        if filename:
            # CVAT may write <filename> without its extension, and without the sub-folder of its split file names
            given = [filename] if Path(filename).suffix.lower() in IMAGE_SUFFIXES else [filename, *_suffixed(filename)]
            if (sub := PurePosixPath(stem).parent).name and "/" not in filename:
                candidates += [f"{sub}/{name}" for name in given]
            candidates += given
        # <path> is often C:\Users\...\x.jpg from the author's machine: only its file name is used.
        candidates += [PureWindowsPath(path_text).name if path_text else None, *_suffixed(stem)]
        names = [n for n in dict.fromkeys(candidates) if n]
        p: Path | None
        for name in names:
            for folder in self.dirs:
                if (p := folder / name).is_file():
                    return p
        for name in names:
            if (p := self._listed().get(Path(name).name)) is not None:
                return p
        return None


def _splits_to_read(layouts: list[VocLayout]) -> list[tuple[VocLayout, str, list[str], Report]]:
    """(layout, split, XML stems, the split's report) for every split of every layout."""
    splits = []
    for layout in layouts:
        first = Report()  # the notes on how the layout's splits were chosen go to its first split
        for i, (split, stems) in enumerate(_split_lists(layout, first).items()):
            splits.append((layout, split, stems, first if i == 0 else Report()))
    return splits


def read_voc(source: Path) -> list[SourceDataset]:
    """All splits of a Pascal VOC dataset (any layout of the module docstring)."""
    layouts = find_voc_layouts(source)
    if not layouts:
        raise OnedetError(
            f"{source}: not a Pascal VOC folder (expected Annotations/ and JPEGImages/, or a folder of VOC XML "
            "files beside a folder of images)"
        )
    parsed: dict[str, list[tuple[str, _Parsed, Path]]] = {}
    reports: dict[str, Report] = {}
    searched: dict[str, Path] = {}
    for layout, split, stems, report in _splits_to_read(layouts):
        reports[split], parsed[split], searched[split] = report, [], layout.annotations
        finder = _ImageFinder(layout, report)
        for stem in stems:
            xml = layout.annotations / f"{stem}.xml"
            if not xml.is_file():
                report.add("missing_annotation_files", xml)
                continue
            item, (filename, path_text) = parse_xml(xml)
            image = finder.find(stem, filename, path_text)
            if image is None:
                report.add("missing_images", layout.image_dirs[0] / (filename or f"{stem}.jpg"))
                continue
            if filename and Path(filename).name not in (image.name, image.stem):  # the stem: no extension
                report.add("filename_not_found", xml)
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
        ids = list(range(len(classes)))
        datasets.append(SourceDataset(split, "voc", classes, ids, images, report, [str(searched[split])]))
    return datasets
