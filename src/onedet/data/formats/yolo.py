"""YOLO txt labels (Ultralytics and Roboflow layouts), with or without `data.yaml`.

One `class cx cy w h` line per box, fractions of the image as displayed. Boxes are returned in pixels: the
displayed size is read from each image's header and EXIF (`images.image_size`), so clipping and
zero-area boxes are counted here. Layouts, in the order they are looked for:

- `data.yaml` with `train`/`val`/`test` paths (folders of images or .txt lists of images), resolved like
  Ultralytics: against the yaml's `path` (or its folder), then, for Roboflow's `../train/images`, with the
  leading `../` dropped; folders named like splits that the yaml does not list are added;
- `{train,valid,val,test}/{images,labels}` (Roboflow);
- `images/{train,val,...}` + `labels/{train,val,...}` (Ultralytics);
- `images/` + `labels/` (one split).

The label file of `.../images/a/b.jpg` is `.../labels/a/b.txt` (the last `images` folder swapped for `labels`),
derived from the image path as written, never from a resolved one: in Ultralytics' own layout `dataset/images`
is a symlink to `../images` and the labels sit in `dataset/labels`. Label files that no image refers to are
counted ("labels_without_image"); an image without a label file is `labeled=False` (prepare checks how many).
Polygon lines (`class x1 y1 x2 y2 ...`, Ultralytics segments) become their bounding box.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from onedet.data.formats.common import clean_boxes, list_images, normalize_split_name
from onedet.data.images import IMAGE_SUFFIXES, image_size
from onedet.data.records import Report, SourceDataset, SourceImage
from onedet.errors import OnedetError

_SPLIT_KEYS = ("train", "val", "valid", "test")
_SPLIT_FOLDERS = ("train", "valid", "val", "validation", "test")


def find_yaml(source: Path) -> Path | None:
    """The dataset yaml: `source` itself, `data.yaml`/`dataset.yaml`, or the only yaml with `names` in it."""
    if source.is_file():
        return source if source.suffix in (".yaml", ".yml") else None
    for name in ("data.yaml", "data.yml", "dataset.yaml"):
        if (source / name).is_file():
            return source / name
    import yaml  # here, not at the top: `label_lines` serves `onedet predict --dataset`, whose image has no pyyaml

    found = []
    for p in sorted(source.glob("*.y*ml")):
        try:
            text = yaml.safe_load(p.read_text())
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(text, dict) and "names" in text:
            found.append(p)
    return found[0] if len(found) == 1 else None


def _load_yaml(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise OnedetError(f"{path}: not a readable yaml file ({e})") from e
    if not isinstance(data, dict):
        raise OnedetError(f"{path}: expected a mapping with 'names' and 'train'/'val' paths")
    return data


def class_names(data: dict, yaml_path: Path) -> list[str] | None:
    """`names` as a list or an {id: name} dict (ids 0..C-1), or `nc` generic names; None when neither is given."""
    names = data.get("names")
    if isinstance(names, dict):
        try:
            by_id = {int(k): str(v) for k, v in names.items()}
        except (TypeError, ValueError) as e:
            raise OnedetError(f"{yaml_path}: 'names' keys must be class ids 0..C-1") from e
        if sorted(by_id) != list(range(len(by_id))):
            raise OnedetError(f"{yaml_path}: 'names' ids must be 0..{len(by_id) - 1}, got {sorted(by_id)}")
        return [by_id[i] for i in range(len(by_id))]
    if isinstance(names, list):
        return [str(n) for n in names]
    if isinstance(data.get("nc"), int):
        return [f"class{i}" for i in range(data["nc"])]
    return None


def _resolve(entry: str, root: Path, yaml_dir: Path) -> Path | None:
    """A yaml split path against the yaml's `path` or folder, with Roboflow's `../x` falling back to `x`.

    Not `Path.resolve()`d: label paths are derived from the path as written (see the module docstring).
    """
    path = Path(entry)
    if path.is_absolute():
        return path if path.exists() else None
    for base in dict.fromkeys((root, yaml_dir)):
        for candidate in (base / entry, base / entry.removeprefix("../"), base / entry.removeprefix("./")):
            if candidate.exists():
                return candidate
    return None


def _images_of(entry: Path, report: Report) -> list[Path]:
    """Images of a yaml split entry: a folder (recursively) or a .txt list of image paths."""
    if entry.is_dir():
        return list_images(entry, report)
    lines = [ln.strip() for ln in entry.read_text().splitlines() if ln.strip()]
    return [p if p.is_absolute() else (entry.parent / p) for p in map(Path, lines)]


def _yaml_splits(yaml_path: Path, data: dict, reports: dict[str, Report]) -> dict[str, list[Path]]:
    yaml_dir = yaml_path.parent
    root = Path(data["path"]) if isinstance(data.get("path"), str) else yaml_dir
    root = root if root.is_absolute() else yaml_dir / root
    splits: dict[str, list[Path]] = {}
    for key in _SPLIT_KEYS:
        entries = data.get(key)
        if not entries:
            continue
        images: list[Path] = []
        report = reports.setdefault(normalize_split_name(key), Report())
        for entry in entries if isinstance(entries, list) else [entries]:
            resolved = _resolve(str(entry), root, yaml_dir)
            if resolved is None:
                raise OnedetError(f"{yaml_path}: {key} path {entry!r} not found (relative to {root} or {yaml_dir})")
            images += _images_of(resolved, report)
        splits[normalize_split_name(key)] = images
    return splits


def _folder_splits(root: Path, reports: dict[str, Report]) -> dict[str, list[Path]]:
    """Splits from the folder layout alone (see the module docstring)."""
    splits: dict[str, list[Path]] = {}

    def report(name: str) -> Report:
        return reports.setdefault(normalize_split_name(name), Report())

    for name in _SPLIT_FOLDERS:
        if (root / name / "images").is_dir() and normalize_split_name(name) not in splits:
            splits[normalize_split_name(name)] = list_images(root / name / "images", report(name))
    images_dir = root / "images"
    if not splits and images_dir.is_dir():
        subdirs = [d for d in sorted(images_dir.iterdir()) if d.is_dir()]
        loose = [p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
        if subdirs and not loose:
            for d in subdirs:
                splits[normalize_split_name(d.name)] = list_images(d, report(d.name))
        else:
            splits["train"] = list_images(images_dir, report("train"))
    return splits


def label_path(image: Path) -> Path:
    """Ultralytics' rule: the last `/images/` of the path becomes `/labels/`, the suffix `.txt`."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    text = str(image)
    if sa not in text:
        return image.with_suffix(".txt")  # labels next to the images
    return Path(sb.join(text.rsplit(sa, 1))).with_suffix(".txt")


def label_lines(boxes_xyxy: np.ndarray, labels: np.ndarray, size_hw: tuple[int, int]) -> str:
    """A label file's text: one `class cx cy w h` line per box (pixels xyxy in an image of `size_hw`), fractions of
    the image written in full precision, so `parse_label_file` reads back the same boxes."""
    h, w = size_hw
    lines = []
    for (x0, y0, x1, y1), label in zip(np.asarray(boxes_xyxy, np.float64).tolist(), np.asarray(labels).tolist()):
        cx, cy, bw, bh = (x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h
        lines.append(f"{int(label)} {cx!r} {cy!r} {bw!r} {bh!r}\n")
    return "".join(lines)


def parse_label_file(path: Path, num_classes: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(class ids int64 [M], boxes as xyxy fractions float64 [M, 4]); errors name the file and line."""
    ids, boxes = [], []
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise OnedetError(f"{path}: cannot read label file ({e})") from e
    for lineno, line in enumerate(text.splitlines(), 1):
        tokens = line.split()
        if not tokens:
            continue
        try:
            values = [float(t) for t in tokens]
        except ValueError as e:
            raise OnedetError(f"{path}:{lineno}: not numbers: {line.strip()!r}") from e
        if not np.isfinite(values).all():  # float() reads 'nan' and 'inf'
            bad = next(t for t, v in zip(tokens, values) if not np.isfinite(v))
            raise OnedetError(f"{path}:{lineno}: {bad!r} is not a finite number in {line.strip()!r}")
        if len(values) < 5 or (len(values) > 5 and len(values) % 2 == 0):
            raise OnedetError(f"{path}:{lineno}: expected 'class cx cy w h' (or 'class x1 y1 x2 y2 ...'), got {line!r}")
        cls = values[0]
        if cls != int(cls) or cls < 0 or (num_classes is not None and cls >= num_classes):
            limit = f"0..{num_classes - 1}" if num_classes is not None else "a non-negative integer"
            raise OnedetError(f"{path}:{lineno}: class id {tokens[0]} out of range (expected {limit})")
        if len(values) == 5:
            cx, cy, w, h = values[1:]
            boxes.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
        else:  # a polygon: its bounding box
            xs, ys = values[1::2], values[2::2]
            boxes.append([min(xs), min(ys), max(xs), max(ys)])
        ids.append(int(cls))
    return np.array(ids, np.int64), np.array(boxes, np.float64).reshape(-1, 4)


def _read_split(images: list[Path], names: list[str] | None, report: Report) -> list[SourceImage]:
    records = []
    for image in images:
        if not image.is_file():
            report.add("missing_images", image)
            continue
        lbl = label_path(image)
        if lbl.is_file():
            ids, fractions = parse_label_file(lbl, len(names) if names is not None else None)
            if len(ids) == 0:
                report.add("empty_label_files", lbl)
        else:
            ids, fractions = np.zeros(0, np.int64), np.zeros((0, 4))
            report.add("images_without_labels", image)
        if len(ids) == 0:
            report.add("background_images", image)
        labeled = lbl.is_file()
        try:
            size_hw = image_size(image)
        except OnedetError:
            # Unreadable header: leave fractions for prepare, which fails on (or, --skip-bad, skips) this image.
            records.append(SourceImage(image, fractions.astype(np.float32), ids, normalized=True, labeled=labeled))
            continue
        h, w = size_hw
        boxes, labels = clean_boxes(fractions * [w, h, w, h], ids, size_hw, report, lbl)
        records.append(SourceImage(image, boxes, labels, size_hw=size_hw, labeled=labeled))
    return records


def _label_folders(images: list[Path]) -> list[Path]:
    """The folders where the split's label files belong (one per folder of images)."""
    return sorted({label_path(p).parent for p in images})


def _orphan_labels(images: list[Path], report: Report) -> None:
    """Count label files in the split's label folders that no image refers to."""
    expected = {label_path(p) for p in images}
    for folder in _label_folders(images):
        if folder.is_dir():
            for txt in sorted(folder.glob("*.txt")):
                if txt not in expected and txt.name != "classes.txt":
                    report.add("labels_without_image", txt)


def read_yolo(source: Path) -> list[SourceDataset]:
    """All splits of a YOLO dataset (a folder, or its data.yaml)."""
    yaml_path = find_yaml(source)
    root = yaml_path.parent if yaml_path is not None else source
    data = _load_yaml(yaml_path) if yaml_path is not None else {}
    reports: dict[str, Report] = {}
    splits = _yaml_splits(yaml_path, data, reports) if yaml_path is not None else {}
    folder_reports: dict[str, Report] = {}
    for name, images in _folder_splits(root, folder_reports).items():
        if name not in splits:  # the yaml's own paths win
            splits[name], reports[name] = images, folder_reports.get(name, Report())
    if not splits:
        raise OnedetError(
            f"{source}: no YOLO splits found; expected a data.yaml with train/val paths, "
            "{train,valid,test}/{images,labels}, images/{train,val} + labels/{train,val}, or images/ + labels/"
        )
    names = class_names(data, yaml_path) if yaml_path is not None else None
    if names is None and (root / "classes.txt").is_file():
        names = [ln.strip() for ln in (root / "classes.txt").read_text().splitlines() if ln.strip()]
    if names is None:  # no names anywhere: one class per id seen
        max_id = -1
        for images in splits.values():
            for image in images:
                if (lbl := label_path(image)).is_file():
                    ids, _ = parse_label_file(lbl, None)
                    max_id = max(max_id, int(ids.max(initial=-1)))
        names = [f"class{i}" for i in range(max_id + 1)]
    datasets = []
    for name, images in splits.items():
        report = reports.get(name, Report())
        records = _read_split(images, names, report)
        _orphan_labels(images, report)
        if images and not records:
            raise OnedetError(f"{source}: split {name!r} lists {len(images)} images but none exists")
        searched = [str(p) for p in _label_folders(images)]
        datasets.append(SourceDataset(name, "yolo", names, list(range(len(names))), records, report, searched))
    return datasets
