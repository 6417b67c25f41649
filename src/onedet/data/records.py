"""What a format reader returns: images with their annotations in original pixel coordinates.

Readers (`onedet.data.formats`) only parse annotation files; images are decoded later, in parallel, by
`onedet.data.prepare`. Everything a reader fixes or skips goes into `SourceDataset.report` so that prepare
can show it: nothing is dropped silently.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


def _read_only(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


# One shared empty array for every record without crowd regions (most of them), rather than two new ones each
# (~220 B per image); read-only, so that no record can change another's.
_NO_CROWD_BOXES = _read_only(np.zeros((0, 4), np.float32))
_NO_CROWD_LABELS = _read_only(np.zeros(0, np.int64))


@dataclass(slots=True)
class SourceImage:
    """One image and its annotations, boxes in the annotation file's pixel coordinates (xyxy).

    Slots: a dataset holds one per image (1.7M for Objects365), and without them each carries a dict.
    """

    path: Path
    """The image file."""
    boxes_xyxy: np.ndarray
    """float32 [M, 4], pixels of the image as displayed (EXIF orientation applied)."""
    labels: np.ndarray
    """int64 [M], contiguous labels 0..C-1."""
    crowd_boxes_xyxy: np.ndarray = field(default_factory=lambda: _NO_CROWD_BOXES)
    """float32 [Mc, 4]: COCO iscrowd regions (VOC difficult objects), kept apart from training boxes: ignore
    regions in evaluation, for the class in `crowd_labels`."""
    image_id: int = -1
    """The dataset's own image id (COCO), or -1 to use the store index."""
    size_hw: tuple[int, int] | None = None
    """(height, width) the annotations claim, if they say; checked against the decoded image."""
    normalized: bool = False
    """True when boxes are fractions of the image size (YOLO), to be scaled once the image is decoded."""
    crowd_labels: np.ndarray = field(default_factory=lambda: _NO_CROWD_LABELS)
    """int64 [Mc]: the contiguous label of each crowd region, for which class COCO ignores it. Empty while
    `crowd_boxes_xyxy` is not (a record built without them) means unknown: prepare stores -1, an ignore region
    for every class. After the older fields, so that records built positionally keep their meaning."""
    labeled: bool = True
    """Whether the reader found an annotation for this image (a YOLO label file, even empty; a COCO annotation;
    a VOC XML). False when its labels were looked for and not found: prepare refuses a split where too few
    images are labeled (unless `allow_background`), because that is what a wrong label path looks like."""


@dataclass
class Report:
    """Counts and files of everything fixed or skipped, by kind (e.g. "clipped_boxes", "background_images")."""

    items: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    notes: dict[str, str] = field(default_factory=dict)
    """A sentence per kind for a person to read (e.g. "held out 36 images of train as val")."""

    def add(self, kind: str, file: str | Path, count: int = 1) -> None:
        self.items[kind].extend([str(file)] * count)

    def note(self, kind: str, text: str) -> None:
        self.notes[kind] = text

    def merge(self, other: Report) -> None:
        for kind, files in other.items.items():
            self.items[kind].extend(files)
        self.notes.update(other.notes)

    def take(self, owned: Callable[[str], bool]) -> Report:
        """Move the entries whose file is `owned` into a new Report (with their counts) and return it; the notes
        stay here."""
        taken = Report()
        for kind, files in self.items.items():
            marks = [owned(f) for f in files]
            if any(marks):
                taken.items[kind].extend(f for f, mine in zip(files, marks) if mine)
                files[:] = [f for f, mine in zip(files, marks) if not mine]
        return taken

    def to_json(self) -> dict[str, dict]:
        """{kind: {"count": n, "files": [unique files, in order]}}, plus "note" for kinds that have one."""
        out: dict[str, dict] = {}
        for kind in sorted(set(self.items) | set(self.notes)):
            files = self.items.get(kind, [])
            if files or kind in self.notes:
                out[kind] = {"count": len(files), "files": list(dict.fromkeys(files))}
                if kind in self.notes:
                    out[kind]["note"] = self.notes[kind]
        return out


@dataclass
class SourceDataset:
    """One split of a dataset as read from disk."""

    name: str
    """Split name: "train", "val", "test", ..."""
    format: str
    """"coco", "yolo", "voc" or "synthetic"."""
    classes: list[str]
    """Class names by contiguous label."""
    category_ids: list[int]
    """The dataset's own class id by contiguous label (COCO category id; else the label itself)."""
    images: list[SourceImage]
    report: Report = field(default_factory=Report)
    searched: list[str] = field(default_factory=list)
    """Where the reader looked for annotations (label folders, a JSON file, an XML folder), for messages."""
