"""The files of one store split (docs/design.md, "The store"), written into a folder prepare renames at the end.

prepare decodes and fixes; this module only lays the results out: the per-image target tensors as memmap files,
tensordict's own metadata over them (no data copied). prepare writes meta.json last (`onedet.atomic.write_json`):
its presence makes the folder a store.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from tensordict import MemoryMappedTensor, TensorDict

from onedet.data.records import SourceImage

_TORCH_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.int64): torch.int64, np.dtype(np.bool_): torch.bool}


def new_memmap(folder: Path, key: str, dtype: np.dtype, shape: tuple[int, ...]) -> np.memmap:
    """A new (sparse, zero) memmap file `folder/<key>.memmap`, the file name tensordict expects for `key`."""
    return np.memmap(folder / f"{key}.memmap", dtype=dtype, mode="w+", shape=shape)


def close_holes(images_file: Path, shape: tuple[int, ...], kept: list[int]) -> None:
    """Move kept images down over the holes of skipped ones (in place, rare path) and truncate the file."""
    images = np.memmap(images_file, dtype=np.uint8, mode="r+", shape=shape)
    for dst, src in enumerate(kept):
        if dst != src:
            images[dst] = images[src]
    images.flush()
    del images
    os.truncate(images_file, len(kept) * int(np.prod(shape[1:])))


def write_targets(td_dir: Path, rows: list, images: list[SourceImage], size: int) -> dict:
    """Boxes padded to the split's largest count (M >= 1) with validity masks; sizes, scales, ids."""
    n = len(rows)
    m = max(1, max(len(r[2]) for r in rows))
    mc = max(1, max(len(r[3]) for r in rows))
    boxes = new_memmap(td_dir, "boxes_xyxy", np.float32, (n, m, 4))
    labels = new_memmap(td_dir, "labels", np.int64, (n, m))
    valid = new_memmap(td_dir, "valid", np.bool_, (n, m))
    crowd = new_memmap(td_dir, "crowd_boxes_xyxy", np.float32, (n, mc, 4))
    crowd_valid = new_memmap(td_dir, "crowd_valid", np.bool_, (n, mc))
    crowd_labels = new_memmap(td_dir, "crowd_labels", np.int64, (n, mc))  # -1: unknown class, ignored for all
    orig_size = new_memmap(td_dir, "orig_size", np.int64, (n, 2))
    scale = new_memmap(td_dir, "scale", np.float32, (n,))
    image_id = new_memmap(td_dir, "image_id", np.int64, (n,))
    for i, ((h, w), b, lab, c, c_lab) in enumerate(rows):
        s = size / max(h, w)  # the letterbox scale (letterbox_params); store pixels = original pixels * s
        boxes[i, : len(b)] = b * s
        labels[i, : len(b)] = lab
        valid[i, : len(b)] = True
        crowd[i, : len(c)] = c * s
        crowd_valid[i, : len(c)] = True
        crowd_labels[i, : len(c)] = c_lab
        orig_size[i] = (h, w)
        scale[i] = s
        image_id[i] = images[i].image_id if images[i].image_id >= 0 else i
    arrays = {
        "boxes_xyxy": boxes,
        "labels": labels,
        "valid": valid,
        "crowd_boxes_xyxy": crowd,
        "crowd_valid": crowd_valid,
        "crowd_labels": crowd_labels,
        "orig_size": orig_size,
        "scale": scale,
        "image_id": image_id,
    }
    for a in arrays.values():
        a.flush()
    return {key: (_TORCH_DTYPES[a.dtype], a.shape) for key, a in arrays.items()}


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
