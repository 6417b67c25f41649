"""The files of one store split (docs/design.md, "The store"), written into a folder prepare renames at the end.

prepare decodes and fixes; this module only lays the results out: the per-image target tensors as memmap files,
written as each image comes back (`TargetWriter`), and tensordict's own metadata over them (no data copied).
prepare writes meta.json last (`onedet.atomic.write_json`): its presence makes the folder a store.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from tensordict import MemoryMappedTensor, TensorDict

_TORCH_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.int64): torch.int64, np.dtype(np.bool_): torch.bool}


def new_memmap(folder: Path, key: str, dtype: npt.DTypeLike, shape: tuple[int, ...]) -> np.memmap:
    """A new (sparse, zero) memmap file `folder/<key>.memmap`, the file name tensordict expects for `key`."""
    return np.memmap(folder / f"{key}.memmap", dtype=dtype, mode="w+", shape=shape)


def close_holes(images_file: Path, shape: tuple[int, ...], kept: Sequence[int] | np.ndarray) -> None:
    """Move kept images down over the holes of skipped ones (in place, rare path) and truncate the file."""
    images = np.memmap(images_file, dtype=np.uint8, mode="r+", shape=shape)
    for dst, src in enumerate(kept):
        if dst != src:
            images[dst] = images[src]
    images.flush()
    del images
    os.truncate(images_file, len(kept) * int(np.prod(shape[1:])))


_BOX_KEYS = ("boxes_xyxy", "labels", "valid")
_CROWD_KEYS = ("crowd_boxes_xyxy", "crowd_valid", "crowd_labels")


class TargetWriter:
    """Writes each image's targets as it comes (boxes padded to M with validity masks; sizes, scales, ids), so no
    per-image object is kept: memory does not grow with the split (BENCHMARKS.md "Store scale").

    Rows are buffered `chunk` images at a time and appended to the files with plain writes (pages written through a
    memmap would stay in this process's RSS). `max_boxes` / `max_crowd`: upper bounds of the counts, known from
    the source boxes before decoding; boxes re-clipped after decoding can only be fewer, and `finish` narrows the
    files to the largest count kept (M >= 1), as if it had been known.
    """

    def __init__(
        self, td_dir: Path, size: int, max_boxes: int, max_crowd: int, num_classes: int, chunk: int = 1024
    ) -> None:
        self.td_dir, self.size = td_dir, size
        self.m, self.mc = max(1, max_boxes), max(1, max_crowd)
        self.num_images = self.num_boxes = 0
        self.max_kept, self.max_kept_crowd = 0, 0
        self.boxes_per_class = np.zeros(num_classes, np.int64)
        m, mc = self.m, self.mc
        self._buf: dict[str, np.ndarray] = {
            "boxes_xyxy": np.zeros((chunk, m, 4), np.float32),
            "labels": np.zeros((chunk, m), np.int64),
            "valid": np.zeros((chunk, m), np.bool_),
            "crowd_boxes_xyxy": np.zeros((chunk, mc, 4), np.float32),
            "crowd_valid": np.zeros((chunk, mc), np.bool_),
            "crowd_labels": np.zeros((chunk, mc), np.int64),  # -1: unknown class, ignored for all
            "orig_size": np.zeros((chunk, 2), np.int64),
            "scale": np.zeros(chunk, np.float32),
            "image_id": np.zeros(chunk, np.int64),
        }
        self._files = {key: open(td_dir / f"{key}.memmap", "wb") for key in self._buf}  # noqa: SIM115
        self._row = 0

    def add(self, size_hw: tuple[int, int], boxes, labels, crowd, crowd_labels, image_id: int) -> None:
        """One kept image: its boxes in original pixels (clipped to `size_hw`); `image_id` -1: its store index."""
        b, r = self._buf, self._row
        h, w = size_hw
        s = self.size / max(h, w)  # the letterbox scale (letterbox_params); store pixels = original pixels * s
        for key in _BOX_KEYS + _CROWD_KEYS:
            b[key][r] = 0  # the buffer's rows are reused
        b["boxes_xyxy"][r, : len(boxes)] = boxes * s
        b["labels"][r, : len(boxes)] = labels
        b["valid"][r, : len(boxes)] = True
        b["crowd_boxes_xyxy"][r, : len(crowd)] = crowd * s
        b["crowd_valid"][r, : len(crowd)] = True
        b["crowd_labels"][r, : len(crowd)] = crowd_labels
        b["orig_size"][r] = (h, w)
        b["scale"][r] = s
        b["image_id"][r] = image_id if image_id >= 0 else self.num_images
        self.num_images += 1
        self.num_boxes += len(boxes)
        self.max_kept, self.max_kept_crowd = max(self.max_kept, len(boxes)), max(self.max_kept_crowd, len(crowd))
        counts = np.bincount(np.asarray(labels, np.int64), minlength=len(self.boxes_per_class))
        counts[: len(self.boxes_per_class)] += self.boxes_per_class
        self.boxes_per_class = counts
        self._row += 1
        if self._row == len(b["scale"]):
            self._flush()

    def _flush(self) -> None:
        for key, f in self._files.items():
            f.write(self._buf[key][: self._row].tobytes())
        self._row = 0

    def close(self) -> None:
        """Close the files (again: harmless), e.g. when prepare stops on an error."""
        for f in self._files.values():
            f.close()

    def finish(self) -> dict:
        """Write what is buffered, narrow M to the largest count kept; return each file's (torch dtype, shape)."""
        self._flush()
        self.close()
        shapes = {}
        for key, a in self._buf.items():
            shape = (self.num_images, *a.shape[1:])
            if key in _BOX_KEYS:
                shape = _narrow(self.td_dir / f"{key}.memmap", a.dtype, shape, max(1, self.max_kept))
            elif key in _CROWD_KEYS:
                shape = _narrow(self.td_dir / f"{key}.memmap", a.dtype, shape, max(1, self.max_kept_crowd))
            shapes[key] = (_TORCH_DTYPES[a.dtype], shape)
        return shapes


def _narrow(file: Path, dtype: np.dtype, shape: tuple[int, ...], width: int) -> tuple[int, ...]:
    """Rewrite a [N, M, ...] file as [N, width, ...] (rare path: boxes dropped after decoding); the new shape."""
    if width == shape[1] or shape[0] == 0:  # no image kept: an empty file, which cannot be mapped
        return (shape[0], width, *shape[2:])
    old = np.memmap(file, dtype=dtype, mode="r", shape=shape)
    kept = np.ascontiguousarray(old[:, :width])  # targets are small: tens of bytes per image
    del old
    kept.tofile(file)
    return kept.shape


def save_tensordict(td_dir: Path, shapes: dict[str, tuple[torch.dtype, tuple[int, ...]]]) -> None:
    """Write tensordict's own metadata over the memmap files already in `td_dir` (no data is copied).

    The tensordict has batch_size [] because the compact layout's `encoded` bytes are not per image.
    """
    tensors = {
        key: MemoryMappedTensor.from_filename(td_dir / f"{key}.memmap", dtype=dtype, shape=shape)
        for key, (dtype, shape) in shapes.items()
    }
    # memmap_ sees tensors already memory-mapped at these very files and only writes td/meta.json.
    TensorDict(tensors, batch_size=[]).memmap_(td_dir, existsok=True)
