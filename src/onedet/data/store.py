"""`Store`: one prepared split (docs/design.md), its metadata, and fast batch reads; `summarize` for `onedet info`.

Batch reads never index tensordict's `MemoryMappedTensor`: indexing it with an index tensor is several times slower
than `index_select` on a plain `torch.Tensor` view of the same memory (`index_select` on the `MemoryMappedTensor`
itself pays `__torch_function__` dispatch; BENCHMARKS.md, "Figures formerly quoted in docstrings"). So the store
keeps the tensordict for its file layout and metadata, and reads through plain views: the small per-image tensors
with `torch.index_select`, the images with `np.take` (`mode="clip"`: indices are checked first, and the default
mode buffers `out`), which is one memcpy per image in the calling thread. Why not `index_select` for the images
too: it splits the copy over torch's OpenMP team, and on a busy CPU the team waits at barriers for a descheduled
thread, an order of magnitude slower than `np.take` there.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tensordict import TensorDict

from onedet.data.checks import DUPLICATES, DUPLICATES_WITHIN
from onedet.errors import OnedetError

# torchvision 0.29 deprecates its JPEG codec in favour of torchcodec, which is not a dependency; the codec still
# works and is the fastest decoder measured (BENCHMARKS.md, Data loading). A module-level filter, because
# `warnings.catch_warnings` is not thread-safe and batches are read in the loader's background thread.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities", category=DeprecationWarning)

_PER_IMAGE_KEYS = (
    "boxes_xyxy",
    "labels",
    "valid",
    "crowd_boxes_xyxy",
    "crowd_valid",
    "crowd_labels",
    "orig_size",
    "scale",
    "image_id",
)
WARNING_KINDS = frozenset({DUPLICATES, DUPLICATES_WITHIN})
"""Report kinds that are not fixes but something to look at (`format_summary` lists them first, as warnings)."""
_META_KEYS = ("layout", "format", "image_size", "classes", "category_ids", "num_images", "num_boxes", "files", "report")
"""meta.json keys every reader needs (docs/design.md)."""
_UNKNOWN_CROWD_LABEL = -1
"""`crowd_labels` of a crowd region whose class is unknown: an ignore region for every class. Stores written
before `crowd_labels` existed (same version 1) read as all unknown, which is how they were evaluated."""


def _is_split(path: Path) -> bool:
    """A split folder of a store root; hidden folders are prepare's temporary ones, never splits."""
    return not path.name.startswith(".") and (path / "meta.json").is_file()


def _not_a_store(path: Path) -> OnedetError:
    if path.is_dir():
        splits = sorted(p.name for p in path.iterdir() if _is_split(p))
        if splits:
            return OnedetError(f"{path}: a store with splits {splits}; open one split, e.g. {path / splits[0]}")
    elif not path.exists():
        return OnedetError(f"{path}: no such store")
    return OnedetError(
        f"{path}: not a onedet store, or an incomplete one (no meta.json: an interrupted prepare leaves none); "
        "run `onedet prepare` to write it"
    )


def _check_file_sizes(td_dir: Path) -> None:
    """Refuse a tensor file shorter than its shape says, before mapping it: mapping would extend it with zeros,
    which then read as boxes and pixels (or, past the first page, crash the process with SIGBUS)."""
    try:
        entries = json.loads((td_dir / "meta.json").read_text())
    except (OSError, ValueError):
        return  # TensorDict.load_memmap reports it
    for key, entry in entries.items():
        if not (isinstance(entry, dict) and "shape" in entry and "dtype" in entry):
            continue
        file = td_dir / f"{key}.memmap"
        itemsize = getattr(torch, str(entry["dtype"]).removeprefix("torch."), torch.uint8).itemsize
        if file.is_file() and file.stat().st_size < int(np.prod(entry["shape"])) * itemsize:
            raise OnedetError(f"{file}: damaged store, the file is shorter than its tensor; prepare the store again")


class Store:
    """One split of a prepared store (`STORE/<split>`), opened memory-mapped: nothing is read until asked."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not meta_path.is_file():
            raise _not_a_store(self.path)
        try:
            self.meta: dict = json.loads(meta_path.read_text())
        except (OSError, ValueError) as e:
            raise OnedetError(f"{meta_path}: unreadable store metadata ({e})") from e
        if not isinstance(self.meta, dict):
            raise OnedetError(f"{meta_path}: not a onedet store's metadata (expected a JSON object)")
        if self.meta.get("complete") is not True:
            raise OnedetError(f"{self.path}: incomplete store (meta.json lacks complete: true); prepare it again")
        if self.meta.get("version") != 1:
            raise OnedetError(f"{self.path}: store version {self.meta.get('version')!r}, this onedet reads version 1")
        _check_file_sizes(self.path / "td")
        try:
            self.td = TensorDict.load_memmap(self.path / "td")
        except Exception as e:  # any failure to map the files means a damaged store
            raise OnedetError(f"{self.path / 'td'}: cannot open the store's tensors ({e})") from e
        if missing_meta := [k for k in _META_KEYS if k not in self.meta]:  # an edited meta.json
            raise OnedetError(f"{meta_path}: damaged store metadata, it lacks {missing_meta}; prepare it again")
        self.layout: str = self.meta["layout"]
        self.image_size: int = self._field("image_size", int)
        self.classes: list[str] = self._field("classes", list)
        self.category_ids: list[int] = self._field("category_ids", lambda ids: [int(c) for c in ids])
        self.files: list[str] = self._field("files", list)
        n = self._field("num_images", int)
        image_keys = ("images",) if self.layout == "raw" else ("encoded", "offsets")
        keys = set(self.td.keys())
        missing = [k for k in (*_PER_IMAGE_KEYS, *image_keys) if k not in keys and k != "crowd_labels"]
        if missing:
            raise OnedetError(f"{self.path}: damaged store, missing tensors {missing}")
        # Plain torch.Tensor views of the memmaps (see the module docstring for why).
        self._tensors = {k: self.td[k].as_subclass(torch.Tensor) for k in (*_PER_IMAGE_KEYS, *image_keys) if k in keys}
        if "crowd_labels" not in keys:  # an older store: in memory, [N, Mc] int64 is small
            self._tensors["crowd_labels"] = torch.full(
                self._tensors["crowd_valid"].shape, _UNKNOWN_CROWD_LABEL, dtype=torch.int64
            )
        self._images_np = self._tensors["images"].numpy() if self.layout == "raw" else None
        if any(len(self._tensors[k]) != n for k in _PER_IMAGE_KEYS) or len(self.files) != n:
            raise OnedetError(f"{self.path}: damaged store, tensor lengths differ from num_images={n}")

    def _field(self, key: str, convert: Callable[[Any], Any]) -> Any:
        try:
            return convert(self.meta[key])
        except (TypeError, ValueError) as e:
            raise OnedetError(
                f"{self.path / 'meta.json'}: damaged store metadata, {key!r} is {self.meta[key]!r}"
            ) from e

    def __len__(self) -> int:
        return len(self.files)

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}, images={len(self)}, layout={self.layout!r}, size={self.image_size})"

    @property
    def max_boxes(self) -> int:
        return int(self._tensors["valid"].shape[1])

    def read_batch(
        self,
        indices: np.ndarray | torch.Tensor | Sequence[int],
        device: torch.device | str | None = None,
        pin_memory: bool = False,
        out: Mapping[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Read the images and targets at `indices` (in that order) in one go.

        Returns `images` uint8 [B, 3, S, S], `boxes_xyxy` float32 [B, M, 4] (store pixels), `labels` int64
        [B, M], `valid` bool [B, M], `crowd_boxes_xyxy` [B, Mc, 4], `crowd_valid` [B, Mc], `crowd_labels` int64
        [B, Mc] (-1: class unknown, ignored for every class), `orig_size` int64 [B, 2] (h, w), `scale` float32
        [B], `image_id` int64 [B], `index` int64 [B]. Tensors are on the CPU
        (pinned if asked and CUDA exists), except compact images, which are decoded on `device` when given.

        `out`: buffers to read into, by key (any of the above but `index`), each contiguous with the batch's
        shape and dtype; the returned tensors for those keys are these buffers. Reading into a reused buffer
        is what makes a raw read run at memory-copy speed: a fresh 16 x 640 px batch (19.7 MB) is a fresh
        mmap from the allocator whose ~2,000 page faults cost more than the copy (BENCHMARKS.md).
        """
        if isinstance(indices, torch.Tensor):
            index = indices.detach().to("cpu", torch.int64).reshape(-1)
        else:
            index = torch.as_tensor(np.asarray(indices), dtype=torch.int64).reshape(-1)
        if len(index) and (int(index.min()) < 0 or int(index.max()) >= len(self)):
            raise IndexError(f"store indices out of range 0..{len(self) - 1}")
        out = dict(out or {})
        self._check_out(out, len(index))
        pin = pin_memory and torch.cuda.is_available()
        batch = {k: self._select(k, index, pin, out.get(k)) for k in _PER_IMAGE_KEYS}
        if self.layout == "raw":
            batch["images"] = self._take_images(index, pin, out.get("images"))
        else:
            images = self._decode(index, device, out.get("images"))
            batch["images"] = images.pin_memory() if pin and not images.is_cuda and "images" not in out else images
        batch["index"] = index
        return batch

    def _check_out(self, out: dict[str, torch.Tensor], n: int) -> None:
        s = self.image_size
        for key, buf in out.items():
            if key == "images":
                shape, dtype = (n, 3, s, s), torch.uint8
            elif key in _PER_IMAGE_KEYS:
                src = self._tensors[key]
                shape, dtype = (n, *src.shape[1:]), src.dtype
            else:
                raise ValueError(f"read_batch: no batch key {key!r} to read into")
            if tuple(buf.shape) != shape or buf.dtype != dtype or not buf.is_contiguous():
                raise ValueError(
                    f"read_batch: out[{key!r}] must be a contiguous {dtype} tensor of shape {shape}, "
                    f"got {buf.dtype} {tuple(buf.shape)}"
                )
            if buf.device.type != "cpu" and not (key == "images" and self.layout == "compact"):
                raise ValueError(f"read_batch: out[{key!r}] must be on the CPU (only compact images decode elsewhere)")

    def _select(self, key: str, index: torch.Tensor, pin: bool, out: torch.Tensor | None = None) -> torch.Tensor:
        src = self._tensors[key]
        if out is None and not pin:
            return torch.index_select(src, 0, index)
        if out is None:
            out = torch.empty((len(index), *src.shape[1:]), dtype=src.dtype, pin_memory=True)
        return torch.index_select(src, 0, index, out=out)

    def _take_images(self, index: torch.Tensor, pin: bool, out: torch.Tensor | None) -> torch.Tensor:
        """Raw images at `index`, one memcpy each in this thread (module docstring: no OpenMP team)."""
        if out is None:
            src = self._tensors["images"]
            out = torch.empty((len(index), *src.shape[1:]), dtype=torch.uint8, pin_memory=pin)
        assert self._images_np is not None  # set for the raw layout, the only one read_batch takes images from
        np.take(self._images_np, index.numpy(), axis=0, out=out.numpy(), mode="clip")
        return out

    def _decode(
        self, index: torch.Tensor, device: torch.device | str | None, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Decode the JPEGs of the compact layout: one batched call (on the GPU when `device` is CUDA)."""
        from torchvision.io import decode_jpeg

        s = self.image_size
        if len(index) == 0:
            return out if out is not None else torch.empty((0, 3, s, s), dtype=torch.uint8, device=device)
        offsets, encoded = self._tensors["offsets"], self._tensors["encoded"]
        starts, ends = offsets[index].tolist(), offsets[index + 1].tolist()
        datas = [encoded[a:b] for a, b in zip(starts, ends)]
        images = decode_jpeg(datas, device=device or "cpu")
        if images[0].is_cuda:
            stacked = torch.stack(images)
            return stacked if out is None else out.copy_(stacked)
        # decode_jpeg returns [3, S, S] views of HWC memory: torch.stack of such views is far slower than np.stack
        # of the HWC arrays and one transpose (BENCHMARKS.md, Data loading).
        hwc = np.stack([im.permute(1, 2, 0).numpy() for im in images])  # (B, S, S, 3)
        if out is not None and out.device.type == "cpu":
            np.copyto(out.numpy(), hwc.transpose(0, 3, 1, 2))
            return out
        chw = torch.from_numpy(np.ascontiguousarray(hwc.transpose(0, 3, 1, 2)))
        return chw if out is None else out.copy_(chw)

    def read_image(self, i: int) -> torch.Tensor:
        """One letterboxed image, uint8 [3, S, S]."""
        return self.read_batch([i])["images"][0]

    def boxes(self) -> dict[str, np.ndarray]:
        """Every box of the split (crowd regions aside), read without an image: `image` [N] (its index), `labels`
        [N], `boxes_xyxy` [N, 4] (store pixels: the size the model sees), `orig_boxes_xyxy` [N, 4] (original
        pixels); and per image `orig_size` [I, 2] (h, w)."""
        image, slot = np.nonzero(self._tensors["valid"].numpy())
        boxes = self._tensors["boxes_xyxy"].numpy()[image, slot]
        scale = self._tensors["scale"].numpy()[image]
        return {
            "image": image,
            "labels": self._tensors["labels"].numpy()[image, slot],
            "boxes_xyxy": boxes,
            "orig_boxes_xyxy": boxes / scale[:, None],
            "orig_size": self._tensors["orig_size"].numpy(),
        }

    def class_counts(self) -> list[int]:
        """Training boxes per label (from meta.json: no need to read the labels of a large store)."""
        if "boxes_per_class" in self.meta:
            return [int(c) for c in self.meta["boxes_per_class"]]
        labels = self._tensors["labels"][self._tensors["valid"]]
        return torch.bincount(labels, minlength=len(self.classes)).tolist()


def _split_dirs(path: Path) -> list[Path]:
    if (path / "meta.json").is_file():
        return [path]
    if path.is_dir():
        splits = sorted(p for p in path.iterdir() if _is_split(p))
        if splits:
            return splits
    raise _not_a_store(path)


def summarize(store_path: str | Path) -> dict[str, dict]:
    """{split: {"images", "boxes", "classes", "per_class", "report", "layout", "image_size", "format"}} of a
    store root (all its splits) or of one split folder."""
    summary = {}
    for split_dir in _split_dirs(Path(store_path)):
        store = Store(split_dir)
        counts = store.class_counts()
        summary[store.meta.get("split", split_dir.name)] = {
            "images": len(store),
            "boxes": int(store.meta["num_boxes"]),
            "classes": store.classes,
            "per_class": dict(zip(store.classes, counts)),
            "report": store.meta["report"],
            "layout": store.layout,
            "image_size": store.image_size,
            "format": store.meta["format"],
        }
    return summary


def plot_splits(store_path: str | Path, out: str | Path) -> list[Path]:
    """`boxes_<split>.png` in `out` for each split of a store root (or the one split folder): see `plots.plot_boxes`."""
    from onedet.train.plots import plot_boxes

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for split_dir in _split_dirs(Path(store_path)):
        store = Store(split_dir)
        split = store.meta.get("split", split_dir.name)
        path = out / f"boxes_{split}.png"
        paths.append(plot_boxes(store.boxes(), store.classes, store.image_size, path, str(store.path)))
    return paths


def format_summary(summary: dict[str, dict], max_files: int = 3) -> str:
    """A readable text table of `summarize()`: per split, counts, per-class boxes, and every fix or skip."""
    lines = []
    for split, s in summary.items():
        lines.append(
            f"{split}: {s['images']} images, {s['boxes']} boxes, {len(s['classes'])} classes "
            f"({s.get('format', '?')}, {s.get('layout', '?')} layout, {s.get('image_size', '?')} px)"
        )
        width = max([len(c) for c in s["classes"]] + [5])
        lines.append(f"  {'class':<{width}}  {'boxes':>8}")
        for name, count in s["per_class"].items():
            lines.append(f"  {name:<{width}}  {count:>8}")
        warned = {k: v for k, v in s["report"].items() if k in WARNING_KINDS}
        fixed = {k: v for k, v in s["report"].items() if k not in WARNING_KINDS}
        for title, items in (("warnings:", warned), ("fixed / skipped:", fixed)):
            if items:
                lines.append(f"  {title}")
                lines += _report_lines(items, max_files)
        if not fixed:
            lines.append("  nothing fixed or skipped")
    return "\n".join(lines)


def _report_lines(items: dict[str, dict], max_files: int) -> list[str]:
    lines = []
    for kind, item in items.items():
        files = item["files"]
        shown = ", ".join(Path(f).name for f in files[:max_files])
        more = f", ... ({len(files) - max_files} more files)" if len(files) > max_files else ""
        lines.append(f"    {kind:<28} {item['count']:>6}  {shown}{more}")
        if item.get("note"):
            lines.append(f"    {'':<28} {'':>6}  ({item['note']})")
    return lines
