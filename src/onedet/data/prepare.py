"""`prepare()`: read a dataset (COCO / YOLO / VOC) and write one memory-mapped store per split (docs/design.md).

How it stays fast and safe:
- Images are decoded and letterboxed by a pool of processes (one per core). In the raw layout each worker writes
  its letterboxed image straight into its slot of the preallocated `images` file and sends back only the
  image size, so memory does not grow with the dataset and no pixels cross a pipe. In the compact layout
  workers send back the JPEG bytes (tens of KB) and the parent appends them to one flat file.
- Boxes are small: they are fixed (scaled from YOLO fractions, clipped, degenerate ones dropped, through the
  readers' `clean_boxes`, so each fix is counted once) in the parent and written as each image comes back
  (`TargetWriter`), so that nothing per image but its slot and digest is kept: prepare's memory stays flat
  from 1k to 50k images (BENCHMARKS.md "Store scale").
- Each split is written into `STORE/.<split>.tmp-<pid>` and renamed to `STORE/<split>` only when complete,
  with `meta.json` (`"complete": true`) written last. An interrupted or failed prepare leaves no
  `STORE/<split>` that `Store` would open; the next run removes the leftovers of dead runs.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import re
import shutil
import sys
import warnings
from collections.abc import Generator, Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from onedet.atomic import replace_folder, write_json
from onedet.cpu import flush_denormals
from onedet.data.checks import (
    DUPLICATES,
    DUPLICATES_WITHIN,
    check_labels_found,
    duplicates_across_splits,
    duplicates_within_splits,
    file_digest,
)
from onedet.data.images import load_image
from onedet.data.letterbox import letterbox_image
from onedet.data.records import Report, SourceDataset, SourceImage
from onedet.data.store_files import TargetWriter, close_holes, new_memmap, save_tensordict
from onedet.errors import OnedetError
from onedet.options import PrepareOptions

# torchvision 0.29 deprecates its JPEG codec in favour of torchcodec, which is not a dependency; the codec still
# works and is the fastest decoder measured here (BENCHMARKS.md, Data loading). A module-level filter, because
# `warnings.catch_warnings` is not thread-safe and batches are read in the loader's background thread.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities", category=DeprecationWarning)

STORE_VERSION = 1
LAYOUTS = ("raw", "compact")
JPEG_QUALITY = 95
UNREADABLE = "unreadable_images"
"""Report kind of images skipped with `skip_bad`."""


class _Decoded(NamedTuple):
    slot: int
    size_hw: tuple[int, int]
    fixes: list[str]
    jpeg: np.ndarray | None  # compact layout: the JPEG of the letterboxed image
    error: str | None  # the OnedetError message of an unreadable image
    digest: str | None = None  # of the file's bytes, to find images shared between splits


# Worker state, set once per process by `_init_worker` (a pool cannot pass it with every task cheaply).
_worker: dict = {}


def _init_worker(image_size: int, layout: str, images_file: str | None) -> None:
    if mp.current_process().name != "MainProcess":
        torch.set_num_threads(1)  # one process per core already; more threads only contend
    _worker.update(image_size=image_size, layout=layout, images=None)
    if images_file is not None:
        # Plain writes, not a memmap: pages written through a mapping stay in the writer's RSS (RssFile) until the
        # kernel evicts them, so each worker's RSS grew with the store (BENCHMARKS.md "Store scale").
        _worker["images"] = open(images_file, "r+b", buffering=0)  # noqa: SIM115 (closed with the worker)


def _decode(task: tuple[int, str]) -> _Decoded:
    """Decode and letterbox one image into its slot (raw) or to JPEG bytes (compact)."""
    from torchvision.io import encode_jpeg

    slot, path = task
    digest = file_digest(path)  # the decoder reads the file again, from the page cache
    try:
        pixels, fixes = load_image(path)
    except OnedetError as e:
        return _Decoded(slot, (0, 0), [], None, str(e))
    boxed = letterbox_image(pixels, _worker["image_size"])
    if _worker["layout"] == "raw":
        _worker["images"].seek(slot * boxed.nbytes)
        if _worker["images"].write(np.ascontiguousarray(boxed)) != boxed.nbytes:
            raise OSError(f"short write of image {slot} to the store")
        return _Decoded(slot, pixels.shape[:2], fixes, None, None, digest)
    jpeg = encode_jpeg(torch.from_numpy(boxed), quality=JPEG_QUALITY).numpy()
    return _Decoded(slot, pixels.shape[:2], fixes, jpeg, None, digest)


def _decode_all(paths: Iterable[str], count: int, workers: int, init_args: tuple) -> Generator[_Decoded, None, None]:
    """Results in order; in-process for one worker (no fork, easy to debug), else a forked pool.

    `paths` is consumed lazily (the pool's feeder blocks on its pipe), so no list of tasks is built.
    """
    tasks = enumerate(paths)
    if workers <= 1 or count <= 1:
        _init_worker(*init_args)
        try:
            yield from map(_decode, tasks)
        finally:
            _worker.clear()  # close the images file: the folder is renamed or deleted next
        return
    # fork: workers inherit the imported modules (spawn would re-import torch in each); DataLoader does the same.
    ctx = mp.get_context("fork") if sys.platform.startswith("linux") else mp.get_context()
    chunksize = max(1, min(16, count // (workers * 8)))
    with ctx.Pool(workers, initializer=_init_worker, initargs=init_args) as pool:
        yield from pool.imap(_decode, tasks, chunksize=chunksize)


def _crowd_labels(image: SourceImage, count: int) -> np.ndarray:
    """The record's crowd labels, -1 (unknown: an ignore region for every class) when it gives none."""
    labels = np.asarray(image.crowd_labels, np.int64).reshape(-1)
    if len(labels) == 0:
        return np.full(count, -1, np.int64)
    if len(labels) != count:
        raise OnedetError(f"{image.path}: {count} crowd boxes but {len(labels)} crowd labels")
    return labels


def _fix_boxes(
    image: SourceImage, size_hw: tuple[int, int], report: Report
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Boxes, labels, crowd boxes and crowd labels in displayed pixels, clipped to the decoded image; fixes
    counted once.

    Readers already clipped boxes to the size they knew; only records left unsized, in fractions (YOLO) or
    whose declared size differs from the decoded one go through `clean_boxes` again.
    """
    from onedet.data.formats.common import clean_boxes

    boxes = np.asarray(image.boxes_xyxy, np.float64).reshape(-1, 4)
    crowd = np.asarray(image.crowd_boxes_xyxy, np.float64).reshape(-1, 4)
    labels = np.asarray(image.labels, np.int64).reshape(-1)
    crowd_labels = _crowd_labels(image, len(crowd))
    h, w = size_hw
    if image.normalized:
        boxes, crowd = boxes * [w, h, w, h], crowd * [w, h, w, h]
    declared = tuple(image.size_hw) if image.size_hw is not None else None
    if declared is not None and declared != (h, w) and not image.normalized:
        report.add("size_mismatch", image.path)  # the annotation's declared size is not the image's
    if image.normalized or declared != (h, w):
        boxes, labels = clean_boxes(boxes, labels, (h, w), report, image.path)
        crowd, crowd_labels = clean_boxes(crowd, crowd_labels, (h, w), report, image.path, kind_prefix="crowd_")
    return boxes.astype(np.float32), labels, crowd.astype(np.float32), crowd_labels


def _relative(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return Path(os.path.relpath(path, root)).as_posix()
        except ValueError:  # another drive on Windows
            pass
    return str(path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale(out: Path, split: str) -> None:
    """Remove temporary folders of earlier prepares of this split whose process is gone."""
    pattern = re.compile(rf"^\.{re.escape(split)}\.(tmp|old)-(\d+)$")
    for p in out.iterdir() if out.is_dir() else []:
        m = pattern.match(p.name)
        if m and (int(m.group(2)) == os.getpid() or not _pid_alive(int(m.group(2)))):
            shutil.rmtree(p, ignore_errors=True)


def _num_cores() -> int:
    """Cores this process may run on (the affinity mask, which containers and taskset restrict)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _check_options(image_size: int, layout: str) -> None:
    if layout not in LAYOUTS:
        raise OnedetError(f"unknown store layout {layout!r} (expected one of {', '.join(LAYOUTS)})")
    if image_size < 32:
        raise OnedetError(f"image size must be at least 32 pixels, got {image_size}")


def write_split(
    dataset: SourceDataset,
    split_dir: str | Path,
    image_size: int = PrepareOptions.image_size,
    skip_bad: bool = False,
    workers: int | None = None,
    layout: str = "raw",
    root: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Write one split as a store at `split_dir` (atomically) and return it. `root`: file names are relative to it."""
    return _write_split(dataset, split_dir, image_size, skip_bad, workers, layout, root, progress)[0]


def _write_split(
    dataset: SourceDataset,
    split_dir: str | Path,
    image_size: int,
    skip_bad: bool,
    workers: int | None,
    layout: str,
    root: str | Path | None,
    progress: bool,
) -> tuple[Path, list[tuple[str | None, str]]]:
    """`write_split`, also returning (digest, file) of each image written, for `duplicates_across_splits`."""
    _check_options(image_size, layout)
    split_dir = Path(split_dir)
    if not dataset.images:
        raise OnedetError(f"split {dataset.name!r} has no images")
    if split_dir.exists() and not (split_dir / "meta.json").is_file() and any(split_dir.iterdir()):
        raise OnedetError(f"{split_dir}: exists and is not a onedet store; refusing to overwrite it")
    out = split_dir.parent
    if out.exists() and not out.is_dir():
        raise OnedetError(f"{out}: exists and is not a folder; pass another --out")
    digests: list[tuple[str | None, str]] = []

    def fill(tmp: Path) -> None:
        digests.extend(_write_into(tmp, dataset, image_size, skip_bad, workers or _num_cores(), layout, root, progress))

    try:
        out.mkdir(parents=True, exist_ok=True)
        _remove_stale(out, split_dir.name)
        replace_folder(split_dir, fill)  # .<split>.tmp-PID, swapped in whole; the previous store is put back on error
    except OSError as e:  # unwritable folder, full disk: the split's previous store, if any, is left as it was
        raise OnedetError(f"{split_dir}: cannot write the store ({e}); nothing of this split was written") from e
    return split_dir, digests


class _Decoding(NamedTuple):
    """What `_decode_split` gathered, by kept image (unreadable ones skipped), as arrays: no object per image."""

    kept: np.ndarray
    """int64 slots (indices into the dataset's images)"""
    targets: TargetWriter
    """the kept images' boxes, written as they came, and their counts"""
    target_shapes: dict
    """{key: (torch dtype, shape)} of the target files, finished"""
    offsets: np.ndarray
    """compact layout: int64 byte offsets of each JPEG in `encoded` (N + 1)"""
    digests: np.ndarray
    """the hex digest of each kept image's file, as bytes; b"" when it could not be read"""


def _max_count(images: list[SourceImage], field: str) -> int:
    """The largest number of boxes in `field` over the records: an upper bound of what decoding keeps."""
    return max((np.size(getattr(im, field)) // 4 for im in images), default=0)


def _decode_split(
    dataset: SourceDataset, workers: int, init_args: tuple, td_dir: Path, skip_bad: bool, progress: bool, report: Report
) -> _Decoding:
    """Decode every image through the pool, in order: fixes counted, boxes fixed and written, JPEGs appended."""
    compact = init_args[1] == "compact"
    images, num_source = dataset.images, len(dataset.images)
    targets = TargetWriter(
        td_dir,
        init_args[0],
        _max_count(images, "boxes_xyxy"),
        _max_count(images, "crowd_boxes_xyxy"),
        len(dataset.classes),
    )
    encoded_file = open(td_dir / "encoded.memmap", "wb") if compact else None  # noqa: SIM115
    kept, digests = np.zeros(num_source, np.int64), np.zeros(num_source, "S32")
    offsets = np.zeros(num_source + 1 if compact else 1, np.int64)
    n = 0
    disable = not progress or not sys.stderr.isatty()  # in a log, every redraw would be one more `\r` line
    bar = tqdm(total=num_source, desc=f"prepare {dataset.name}", unit="img", disable=disable, leave=False)
    results = _decode_all((str(im.path) for im in images), num_source, workers, init_args)
    try:
        for result in results:
            bar.update(1)
            image = images[result.slot]
            if result.error is not None:
                if not skip_bad:
                    raise OnedetError(f"{result.error} (pass --skip-bad to skip unreadable images)")
                report.add(UNREADABLE, image.path)
                continue
            for fix in result.fixes:
                report.add(fix, image.path)
            targets.add(result.size_hw, *_fix_boxes(image, result.size_hw, report), image.image_id)
            kept[n], digests[n] = result.slot, (result.digest or "").encode()
            if encoded_file is not None:
                assert result.jpeg is not None  # the compact layout's workers return the JPEG of every image read
                encoded_file.write(result.jpeg.tobytes())
                offsets[n + 1] = offsets[n] + len(result.jpeg)
            n += 1
        target_shapes = targets.finish()
    finally:
        results.close()  # on an error, stop the pool now rather than when the traceback is freed
        bar.close()
        targets.close()
        if encoded_file is not None:
            encoded_file.close()
    return _Decoding(kept[:n], targets, target_shapes, offsets[: n + 1], digests[:n])


def _image_tensors(td_dir: Path, layout: str, num_source: int, size: int, done: _Decoding) -> dict:
    """Finish the images' files (close the holes of skipped ones; write the offsets) and return their shapes."""
    n = len(done.kept)
    if layout == "raw":
        if n < num_source:
            close_holes(td_dir / "images.memmap", (num_source, 3, size, size), done.kept)
        return {"images": (torch.uint8, (n, 3, size, size))}
    done.offsets.tofile(td_dir / "offsets.memmap")
    return {"encoded": (torch.uint8, (int(done.offsets[-1]),)), "offsets": (torch.int64, (n + 1,))}


def _meta(dataset: SourceDataset, layout: str, size: int, done: _Decoding, report: Report, root: Path | None) -> dict:
    """meta.json's contents (docs/design.md, "The store")."""
    return {
        "version": STORE_VERSION,
        "layout": layout,
        "format": dataset.format,
        "split": dataset.name,
        "image_size": size,
        "classes": list(dataset.classes),
        "category_ids": [int(c) for c in dataset.category_ids],
        "num_images": len(done.kept),
        "num_boxes": done.targets.num_boxes,
        "max_boxes": max(1, done.targets.max_kept),
        "boxes_per_class": done.targets.boxes_per_class.tolist(),
        "files": [_relative(dataset.images[i].path, root) for i in done.kept],
        "report": report.to_json(),
        "complete": True,
    }


def _write_into(
    tmp: Path,
    dataset: SourceDataset,
    image_size: int,
    skip_bad: bool,
    workers: int,
    layout: str,
    root: str | Path | None,
    progress: bool,
) -> list[tuple[str | None, str]]:
    """Write the whole store of one split into `tmp`, meta.json last; return (digest, file) per image kept."""
    num_source, size = len(dataset.images), image_size
    td_dir = tmp / "td"
    td_dir.mkdir()
    report = Report()
    report.merge(dataset.report)
    if layout == "raw":
        images_shape = (num_source, 3, size, size)
        new_memmap(td_dir, "images", np.uint8, images_shape).flush()  # sparse file: no pages written yet
        init_args: tuple = (size, layout, str(td_dir / "images.memmap"))
    else:
        init_args = (size, layout, None)
    done = _decode_split(dataset, workers, init_args, td_dir, skip_bad, progress, report)
    if len(done.kept) == 0:
        raise OnedetError(f"split {dataset.name!r}: none of its {num_source} images could be read")
    shapes = dict(done.target_shapes)
    shapes |= _image_tensors(td_dir, layout, num_source, size, done)
    save_tensordict(td_dir, shapes)
    root_path = Path(root) if root is not None else None
    write_json(tmp / "meta.json", _meta(dataset, layout, size, done, report, root_path), indent=None)  # last
    return [(d.decode() or None, str(dataset.images[i].path)) for d, i in zip(done.digests, done.kept)]


def prepare(
    source: str | Path | Sequence[SourceDataset],
    out: str | Path,
    format: str = "auto",
    image_size: int = PrepareOptions.image_size,
    skip_bad: bool = False,
    workers: int | None = None,
    layout: str = "raw",
    progress: bool = True,
    allow_background: bool = False,
    unlabeled: bool = False,
) -> list[str]:
    """Read a dataset folder (or file) and write `out/<split>` for each split; return the split names.

    `source` may also be a list of `SourceDataset` (e.g. built in memory). Raises `OnedetError` on bad input:
    without `skip_bad`, the first unreadable image stops the run, naming the file; without `allow_background`,
    a split where too few images have labels (`checks.check_labels_found`) stops it before anything is
    written. `unlabeled`: every image under the `source` folder, annotations ignored, as one split
    "unlabeled" with no boxes (e.g. for distillation). Images found in two splits (same bytes) are a
    warning, printed and added to the report of each split involved ("duplicates_across_splits"); so are images
    found twice in one split ("duplicates_within_split").
    """
    _check_options(image_size, layout)  # before reading a large dataset's annotations
    flush_denormals()  # before torch's thread pool starts (onedet/cpu.py); later training inherits it
    if isinstance(source, (str, Path)):
        source = Path(source)
        if not source.exists():
            raise OnedetError(f"{source}: dataset not found")
        datasets = _read(source, format, unlabeled)
        root: Path | None = source if source.is_dir() else source.parent
    else:
        datasets, root = list(source), None
    out = Path(out)
    names = [d.name for d in datasets]
    if len(set(names)) != len(names):
        raise OnedetError(f"{out}: several splits share a name: {names}")
    if not (allow_background or unlabeled):
        check_labels_found(datasets)
    digests = {}
    for dataset in datasets:
        _, digests[dataset.name] = _write_split(
            dataset, out / dataset.name, image_size, skip_bad, workers, layout, root, progress
        )
    _report_duplicates(out, digests)
    return names


def _read(source: Path, format: str, unlabeled: bool) -> list[SourceDataset]:
    from onedet.data.formats import read_dataset, read_unlabeled

    return [read_unlabeled(source)] if unlabeled else read_dataset(source, format=format)


def _report_duplicates(out: Path, digests: dict[str, list[tuple[str | None, str]]]) -> None:
    """Add "duplicates_across_splits" and "duplicates_within_split" to the report of each split involved, and print
    one warning line for each kind.

    The splits are complete stores by now: meta.json is read, extended and replaced atomically.
    """
    for kind, found in (
        (DUPLICATES, duplicates_across_splits(digests)),
        (DUPLICATES_WITHIN, duplicates_within_splits(digests)),
    ):
        for split, (files, note) in found.items():
            meta_path = out / split / "meta.json"
            meta = json.loads(meta_path.read_text())
            meta["report"][kind] = {"count": len(files), "files": list(dict.fromkeys(files)), "note": note}
            meta["report"] = dict(sorted(meta["report"].items()))  # Report.to_json's order
            write_json(out / split / "meta.json", meta, indent=None)
        if found:  # one line: the first split's note says what, the report of each split says the rest
            first = next(iter(found.values()))[1]
            print(f"warning: {first}; see {kind} in the report of {', '.join(found)}", file=sys.stderr)
