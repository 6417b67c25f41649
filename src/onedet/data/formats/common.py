"""Helpers shared by the format readers: box clean-up with counting, split names, image listing.

`clean_boxes` is the one place boxes are clipped and degenerate ones dropped, so each fix is counted once:
readers call it when they know the image size; prepare calls it for a record it had to leave unsized
(`SourceImage.normalized` or `size_hw is None`), once the image is decoded.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from onedet.data.images import IMAGE_SUFFIXES
from onedet.data.records import Report
from onedet.errors import OnedetError

CLIP_TOLERANCE_PX = 1e-2
"""A box further outside the image than this is counted as clipped; closer is float noise (YOLO's rounded
text, COCO's float32 sums) and is clipped without counting."""

_SPLIT_ALIASES = {"valid": "val", "validation": "val", "training": "train", "testing": "test", "dev": "val"}


def empty_boxes() -> np.ndarray:
    return np.zeros((0, 4), np.float32)


def clip_boxes(boxes_xyxy: np.ndarray, sizes_hw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clip float64 boxes [M, 4] to image sizes ([2] for all, or [M, 2] per box, as (h, w)).

    Returns the clipped boxes, `keep` [M] (positive area left) and `moved` [M] (clipped by more than
    `CLIP_TOLERANCE_PX`). The vectorised core of `clean_boxes`, also used whole-dataset by the COCO reader.
    """
    sizes = np.broadcast_to(np.asarray(sizes_hw, np.float64), (len(boxes_xyxy), 2))
    clipped = np.empty_like(boxes_xyxy)
    clipped[:, [0, 2]] = np.clip(boxes_xyxy[:, [0, 2]], 0, sizes[:, 1:2])
    clipped[:, [1, 3]] = np.clip(boxes_xyxy[:, [1, 3]], 0, sizes[:, 0:1])
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    moved = np.abs(clipped - boxes_xyxy).max(axis=1) > CLIP_TOLERANCE_PX
    return clipped, keep, moved


def clean_boxes(
    boxes_xyxy: np.ndarray,
    labels: np.ndarray,
    size_hw: tuple[int, int],
    report: Report,
    file: str | Path,
    kind_prefix: str = "",
) -> tuple[np.ndarray, np.ndarray]:
    """Clip boxes [M, 4] (pixels) to the image and drop those with no area left; count both in `report`.

    Kinds: "clipped_boxes" (partly outside, kept) and "zero_area_boxes" (zero or negative width or height,
    as annotated or once clipped, e.g. wholly outside the image; dropped). `kind_prefix` separates crowd
    regions ("crowd_"). Each box lands in at most one kind.
    """
    boxes = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)
    labels = np.asarray(labels, np.int64).reshape(-1)
    if len(boxes) == 0:
        return empty_boxes(), np.zeros(0, np.int64)
    clipped, keep, moved = clip_boxes(boxes, np.asarray(size_hw, np.float64))
    if (n_dropped := int((~keep).sum())) > 0:
        report.add(f"{kind_prefix}zero_area_boxes", file, n_dropped)
    if (n_clipped := int((moved & keep).sum())) > 0:
        report.add(f"{kind_prefix}clipped_boxes", file, n_clipped)
    return clipped[keep].astype(np.float32), labels[keep]


def normalize_split_name(name: str) -> str:
    """ "valid"/"validation" -> "val", "training" -> "train", ...; COCO's year suffix dropped ("train2017")."""
    name = name.strip().lower()
    name = re.sub(r"^instances_", "", name)
    name = re.sub(r"[_-]?(19|20)\d\d$", "", name) or name
    return _SPLIT_ALIASES.get(name, name)


REPEATED_FOLDERS = "symlinked_folders_skipped"
"""Report kind of folders reached a second time through a symlink while listing images (read once)."""


def list_images(folder: Path, report: Report | None = None) -> list[Path]:
    """Image files under `folder` (recursively, through symlinked folders too), sorted for a deterministic order.

    Paths are as reached from `folder`, never resolved: a YOLO label path is derived from the image path as
    written. A folder reached again through a symlink (a loop, or a second link to it) is read once: counted
    and listed in `report` as "symlinked_folders_skipped", or, without a report, an `OnedetError`.
    """
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()
    pending = [Path(folder)]

    def skip(path: Path, why: str) -> None:
        if report is None:
            raise OnedetError(f"{path}: {why}")
        report.add(REPEATED_FOLDERS, path)

    while pending:
        current = pending.pop()
        try:
            st = current.stat()
            if (st.st_dev, st.st_ino) in seen:
                skip(current, "a symlink leads back to a folder already listed (a loop?)")
                continue
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(current) as entries:
                for entry in entries:
                    try:
                        is_dir = entry.is_dir()  # follows symlinks; `seen` stops loops
                    except OSError as e:  # ELOOP: a symlink to itself, which the OS refuses to follow
                        skip(Path(entry.path), f"a symlink that cannot be followed ({e.strerror})")
                        continue
                    if is_dir:
                        pending.append(Path(entry.path))
                    elif Path(entry.name).suffix.lower() in IMAGE_SUFFIXES and entry.is_file():
                        found.append(Path(entry.path))
        except OSError as e:  # e.g. no permission
            raise OnedetError(f"{current}: cannot list this folder ({e})") from e
    return sorted(found)
