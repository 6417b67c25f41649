"""The built-in synthetic shapes dataset: the quickstart's default data and the tests' ground truth.

Four classes that differ by shape (circle, square, triangle, cross), with hues loosely tied to the class,
drawn with hard edges on textured backgrounds (gradients, stripes, smooth noise). Every box is the exact
extent of its shape's *visible* pixels (continuous coordinates: pixel columns 3..9 give x0=3, x1=10), so
tests can check geometry to the pixel. Image i depends only on (seed, i), never on how many images are drawn.

`render_synthetic` draws in memory; `make_synthetic` writes a real on-disk dataset (COCO, YOLO or VOC, PNG
images: lossless, so the pixels match the boxes exactly) that goes through the same `prepare` path as user data.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from onedet.errors import OnedetError

CLASSES = ("circle", "square", "triangle", "cross")
PLAIN_BACKGROUND = (114, 114, 114)
"""The background of `plain=True` renders; no shape colour is this grey (shapes are saturated)."""

_MIN_SIDE = 0.10  # object size as a fraction of the image side: large enough for a tiny model to learn fast
_MAX_SIDE = 0.50
_MAX_OCCLUDED = 0.3  # an object may lose at most this fraction of its pixels to later objects
_MAX_OBJECTS = 6


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    """One HSV colour (all in 0..1) to RGB floats in 0..255."""
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.array(rgb, np.float32) * 255


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A low-saturation texture, float32 [S, S, 3]: a gradient, stripes or smooth noise, plus pixel noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    c0 = _hsv_to_rgb(rng.random(), rng.uniform(0, 0.35), rng.uniform(0.25, 0.85))
    c1 = _hsv_to_rgb(rng.random(), rng.uniform(0, 0.35), rng.uniform(0.25, 0.85))
    kind = rng.integers(3)
    if kind == 0:  # linear gradient in a random direction
        theta = rng.uniform(0, 2 * np.pi)
        t = xx * np.cos(theta) + yy * np.sin(theta)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    elif kind == 1:  # soft stripes
        theta = rng.uniform(0, np.pi)
        freq = rng.uniform(3, 12)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (xx * np.cos(theta) + yy * np.sin(theta)) + rng.uniform(0, 6.3))
    else:  # smooth value noise: a coarse random grid upsampled bicubically
        cells = int(rng.integers(3, 9))
        coarse = (rng.random((cells, cells)) * 255).astype(np.uint8)
        t = np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC), np.float32) / 255
    img = c0 + t[..., None] * (c1 - c0)
    return img + rng.normal(0, 4, img.shape).astype(np.float32)


def _shape_mask(kind: int, cx: float, cy: float, w: float, h: float, size: int) -> np.ndarray:
    """Boolean [S, S] mask of one shape, sampled at pixel centres (hard edges, so the extent is exact)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    dx, dy = (xx - cx) / (w / 2), (yy - cy) / (h / 2)  # -1..1 inside the shape's frame
    if kind == 0:  # circle (an ellipse when w != h)
        return dx**2 + dy**2 <= 1
    if kind == 1:  # square (a rectangle when w != h)
        return (np.abs(dx) <= 1) & (np.abs(dy) <= 1)
    if kind == 2:  # triangle pointing up: apex (0, -1), base from (-1, 1) to (1, 1)
        return (dy <= 1) & (np.abs(dx) <= (dy + 1) / 2)
    arm = 1 / 3  # cross: a plus sign with arms a third of the size thick
    inside = (np.abs(dx) <= 1) & (np.abs(dy) <= 1)
    return inside & ((np.abs(dx) <= arm) | (np.abs(dy) <= arm))


def _render_one(rng: np.random.Generator, size: int, plain: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image: uint8 [S, S, 3], boxes float32 [K, 4] (visible extents), labels int64 [K]."""
    img = np.full((size, size, 3), PLAIN_BACKGROUND, np.float32) if plain else _background(rng, size)
    owner = np.full((size, size), -1, np.int16)  # which object each pixel shows, for the visible extents
    kinds: list[int] = []
    num_objects = int(rng.integers(1, _MAX_OBJECTS + 1))
    for _ in range(num_objects * 10):  # rejection sampling: placements that hide too much of others are retried
        if len(kinds) == num_objects:
            break
        kind = int(rng.integers(len(CLASSES)))
        side = rng.uniform(_MIN_SIDE, _MAX_SIDE) * size
        aspect = rng.uniform(0.75, 1.33)
        w, h = side * np.sqrt(aspect), side / np.sqrt(aspect)
        cx, cy = rng.uniform(w / 2, size - w / 2), rng.uniform(h / 2, size - h / 2)
        mask = _shape_mask(kind, cx, cy, w, h, size)
        before = np.bincount(owner[owner >= 0], minlength=len(kinds))
        after = np.bincount(owner[(owner >= 0) & ~mask], minlength=len(kinds))
        if np.any(after < (1 - _MAX_OCCLUDED) * before):
            continue
        # hue tied loosely to the class (overlapping ranges): colour helps, but shape decides
        hue = (kind / len(CLASSES) + rng.uniform(-0.18, 0.18)) % 1.0
        colour = _hsv_to_rgb(hue, rng.uniform(0.65, 1.0), rng.uniform(0.55, 1.0))
        img[mask] = colour
        owner[mask] = len(kinds)
        kinds.append(kind)
    boxes = np.zeros((len(kinds), 4), np.float32)
    for k in range(len(kinds)):
        ys, xs = np.nonzero(owner == k)
        boxes[k] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), boxes, np.array(kinds, np.int64)


def render_synthetic(
    num_images: int, image_size: int = 256, seed: int = 0, plain: bool = False
) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """Draw the dataset in memory.

    Returns images uint8 [N, S, S, 3] and, per image, (boxes_xyxy float32 [K, 4], labels int64 [K]) with
    1 <= K <= 6. `plain=True` draws on a uniform `PLAIN_BACKGROUND` (for exact pixel checks).
    """
    images = np.empty((num_images, image_size, image_size, 3), np.uint8)
    targets = []
    for i in range(num_images):
        rng = np.random.default_rng([seed, i])
        images[i], boxes, labels = _render_one(rng, image_size, plain)
        targets.append((boxes, labels))
    return images, targets


def _split_indices(num_images: int, val_fraction: float, seed: int) -> dict[str, np.ndarray]:
    num_val = round(num_images * val_fraction)
    order = np.random.default_rng([seed, 1 << 20]).permutation(num_images)
    splits = {"train": np.sort(order[num_val:]), "val": np.sort(order[:num_val])}
    return {name: idx for name, idx in splits.items() if len(idx)}


def _write_coco(out: Path, split: str, names: list[str], targets: list, size: int) -> None:
    images: list[dict] = []
    annotations: list[dict] = []
    for image_id, (name, (boxes, labels)) in enumerate(zip(names, targets), start=1):
        images.append({"id": image_id, "file_name": name, "height": size, "width": size})
        for (x0, y0, x1, y1), label in zip(boxes.tolist(), labels.tolist()):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": label + 1,  # COCO ids start at 1
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                }
            )
    doc = {
        "info": {"description": "onedet synthetic shapes"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": c, "supercategory": "shape"} for i, c in enumerate(CLASSES)],
    }
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    (out / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc, indent=1))


def _write_yolo_labels(folder: Path, names: list[str], targets: list, size: int) -> None:
    from onedet.data.formats.yolo import label_lines

    folder.mkdir(parents=True, exist_ok=True)
    for name, (boxes, labels) in zip(names, targets):
        (folder / (Path(name).stem + ".txt")).write_text(label_lines(boxes, labels, (size, size)))


def _write_voc(out: Path, names: list[str], targets: list, size: int) -> None:
    (out / "Annotations").mkdir(parents=True, exist_ok=True)
    for name, (boxes, labels) in zip(names, targets):
        objects = "".join(
            f"<object><name>{CLASSES[label]}</name><difficult>0</difficult><bndbox>"
            # VOC coordinates are 1-based pixel indices, inclusive at both ends
            f"<xmin>{int(x0) + 1}</xmin><ymin>{int(y0) + 1}</ymin><xmax>{int(x1)}</xmax><ymax>{int(y1)}</ymax>"
            "</bndbox></object>"
            for (x0, y0, x1, y1), label in zip(boxes.tolist(), labels.tolist())
        )
        xml = (
            f"<annotation><filename>{name}</filename>"
            f"<size><width>{size}</width><height>{size}</height><depth>3</depth></size>{objects}</annotation>\n"
        )
        (out / "Annotations" / (Path(name).stem + ".xml")).write_text(xml)


def make_synthetic(
    out: Path,
    num_images: int = 200,
    image_size: int = 256,
    seed: int = 0,
    format: str = "coco",
    val_fraction: float = 0.2,
) -> Path:
    """Write the synthetic dataset to `out` as a real dataset on disk and return `out`.

    Layouts: `coco`: `annotations/instances_{train,val}.json` + `{train,val}/*.png` (category ids 1..4);
    `yolo`: `data.yaml` + `{train,valid}/{images,labels}`; `voc`: `Annotations/`, `JPEGImages/` (PNG files)
    and `ImageSets/Main/{train,val}.txt`. The validation split is a seeded `val_fraction` of the images.
    """
    if format not in ("coco", "yolo", "voc"):
        raise OnedetError(f"make_synthetic: unknown format {format!r} (expected coco, yolo or voc)")
    if num_images < 1:
        raise OnedetError(f"make_synthetic: num_images must be at least 1, got {num_images}")
    out = Path(out)
    images, targets = render_synthetic(num_images, image_size, seed)
    names = [f"{i:06d}.png" for i in range(num_images)]
    for split, idx in _split_indices(num_images, val_fraction, seed).items():
        split_names = [names[i] for i in idx]
        split_targets = [targets[i] for i in idx]
        if format == "coco":
            image_dir = out / split
        elif format == "yolo":
            image_dir = out / ("valid" if split == "val" else split) / "images"
            _write_yolo_labels(image_dir.parent / "labels", split_names, split_targets, image_size)
        else:
            image_dir = out / "JPEGImages"  # VOC's folder name; the files stay lossless PNG
            (out / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
            (out / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(Path(n).stem + "\n" for n in split_names))
        image_dir.mkdir(parents=True, exist_ok=True)
        for i, name in zip(idx, split_names):
            Image.fromarray(images[i]).save(image_dir / name, compress_level=6)
        if format == "coco":
            _write_coco(out, split, split_names, split_targets, image_size)
        elif format == "voc":
            _write_voc(out, split_names, split_targets, image_size)
    if format == "yolo":
        yaml = "train: train/images\nval: valid/images\n" + f"nc: {len(CLASSES)}\nnames: {list(CLASSES)!r}\n"
        (out / "data.yaml").write_text(yaml)
    return out
