"""Checks prepare runs across the splits of a dataset: labels found at all, and images shared between splits.

Both catch mistakes that otherwise pass silently. A split where (almost) no image has a label is what a
wrong label path looks like (a YOLO `images/` symlink resolved to the wrong place, a mislaid label folder),
and training on it learns "background" without a word; so it is an error unless the user says it is meant
(`allow_background`). An image present in two splits (same bytes) makes validation scores optimistic; it is
a warning, in the report of every split involved (kind "duplicates_across_splits"). An image present twice in one
split (an export that copied files, a folder merged twice) weighs double in training and in the split's metrics;
it is a warning too, in that split's report (kind "duplicates_within_split").
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from onedet.data.records import SourceDataset
from onedet.errors import OnedetError

MIN_LABELED_FRACTION = 0.5
"""Below this fraction of labeled images, a split is refused when labels exist elsewhere in the dataset."""
DUPLICATES = "duplicates_across_splits"
"""Report kind of images whose bytes are also in another split."""
DUPLICATES_WITHIN = "duplicates_within_split"
"""Report kind of images whose bytes are those of an earlier image of the same split."""
_SHOWN = 5  # folders / files named in a one-line message


def _some(items: Sequence[str]) -> str:
    more = f", ... ({len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
    return ", ".join(items[:_SHOWN]) + more


def check_labels_found(datasets: Sequence[SourceDataset]) -> None:
    """`OnedetError` for a split where no image is labeled, or fewer than half while labels exist elsewhere.

    "Labeled" is `SourceImage.labeled` (an annotation was found, even an empty one); "elsewhere" is another
    split with labeled images, or label files of this split that match no image ("labels_without_image").
    The message names the folders (or files) that were searched.
    """
    labeled = [sum(im.labeled for im in d.images) for d in datasets]
    for i, d in enumerate(datasets):
        n, k = len(d.images), labeled[i]
        orphans = len(d.report.items.get("labels_without_image", []))
        elsewhere = orphans > 0 or any(labeled[j] for j in range(len(datasets)) if j != i)
        if n == 0 or not (k == 0 or (k < MIN_LABELED_FRACTION * n and elsewhere)):
            continue
        where = f"looked in {_some(d.searched)}" if d.searched else "no annotation source recorded"
        unmatched = f"; {orphans} label files match no image" if orphans else ""
        raise OnedetError(
            f"split {d.name!r}: only {k} of its {n} images have labels ({where}){unmatched}. "
            "If the images are meant to be background, pass --allow-background (allow_background=True)"
        )


def file_digest(path: str | Path) -> str | None:
    """blake2b (128 bits) of a file's bytes, hex; None when it cannot be read (the decoder reports why)."""
    try:
        with open(path, "rb") as f:
            return hashlib.blake2b(f.read(), digest_size=16).hexdigest()
    except OSError:
        return None


def duplicates_across_splits(digests: dict[str, list[tuple[str | None, str]]]) -> dict[str, tuple[list[str], str]]:
    """{split: (its files whose bytes are also in another split, a sentence)} from {split: [(digest, file)]}.

    Splits without such files are left out. Files with no digest (unreadable) are never duplicates.
    """
    splits_of: dict[str, set[str]] = defaultdict(set)
    for split, rows in digests.items():
        for digest, _ in rows:
            if digest is not None:
                splits_of[digest].add(split)
    found = {}
    for split, rows in digests.items():
        files = [f for digest, f in rows if digest is not None and len(splits_of[digest]) > 1]
        if files:
            others = sorted({s for digest, _ in rows if digest is not None for s in splits_of[digest]} - {split})
            names = _some([Path(f).name for f in files])
            note = f"{len(files)} images of {split} are also in {', '.join(others)} (same bytes): {names}"
            found[split] = (files, note)
    return found


def duplicates_within_splits(digests: dict[str, list[tuple[str | None, str]]]) -> dict[str, tuple[list[str], str]]:
    """{split: (its files whose bytes are those of an earlier file of the split, a sentence)}, from the same
    {split: [(digest, file)]} as `duplicates_across_splits`. Splits without such files are left out."""
    found = {}
    for split, rows in digests.items():
        first: dict[str, str] = {}
        pairs = []
        for digest, file in rows:
            if digest is None:
                continue
            if digest in first:  # a copy, or the same file listed twice
                pairs.append((file, first[digest]))
            first.setdefault(digest, file)
        if pairs:
            shown = _some([f"{Path(f).name} = {Path(o).name}" for f, o in pairs])
            note = f"{len(pairs)} images of {split} repeat another image of {split} (same bytes): {shown}"
            found[split] = ([f for f, _ in pairs], note)
    return found
