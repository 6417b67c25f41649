"""Data loading: images per second of the store against the usual pipeline and a memory copy, on the real datasets.

(1) uint8 batches, no augmentation: `BatchLoader(as_float=False)` on the raw layout and on the compact layout
    (JPEG decoded at load time), the usual pipeline (a torch DataLoader with 2 workers: PIL decode + letterbox
    per sample), and a plain memory copy of the same number of bytes out of the same memmap (the physical
    ceiling); for reference, `Store.read_batch` called in the main thread (torch's 2-thread OpenMP team).
(2) training-ready batches (augmented float images in [0, 1]; normalisation is the model's): `BatchLoader` with
    `BatchAugment` against the usual pipeline with per-sample albumentations (the same kinds of augmentation:
    flip, scale + shift, brightness/contrast/saturation/hue jitter, boxes filtered), 2 workers.

Stores are prepared once (train split, 640 px) into benchmarks/out/data_loading/ and reused. All rates are
steady state: the first batch (worker start-up, page cache) is not counted.

    .venv/bin/python benchmarks/data_loading.py
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import albumentations as A
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, RandomSampler

from onedet.data.augment import BatchAugment
from onedet.data.formats import read_dataset
from onedet.data.loader import BatchLoader
from onedet.data.prepare import prepare
from onedet.data.records import SourceImage
from onedet.data.store import Store

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
OUT = Path(__file__).resolve().parent / "out" / "data_loading"
DATASETS = {"bccd": "bccd", "aquarium": "aquarium/aquarium_pretrain", "coco128": "coco128_coco"}


class UsualDataset(Dataset):
    """The usual per-sample pipeline: PIL decode, letterbox (PIL resize + paste on grey), optional albumentations."""

    def __init__(self, images: list[SourceImage], size: int, augment: A.Compose | None = None) -> None:
        self.images, self.size, self.augment = images, size, augment

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        item = self.images[i]
        img = Image.open(item.path).convert("RGB")
        scale = self.size / max(img.size)
        new = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        canvas = Image.new("RGB", (self.size, self.size), (114, 114, 114))
        canvas.paste(img.resize(new, Image.BILINEAR), (0, 0))
        pixels = np.asarray(canvas)
        boxes, labels = item.boxes_xyxy * scale, item.labels
        if self.augment is None:
            return torch.from_numpy(pixels.copy()).permute(2, 0, 1), torch.from_numpy(boxes), torch.from_numpy(labels)
        out = self.augment(image=pixels, bboxes=boxes, labels=labels)
        image = torch.from_numpy(out["image"]).permute(2, 0, 1).float().div_(255)
        boxes = torch.as_tensor(np.asarray(out["bboxes"], np.float32).reshape(-1, 4))
        return image, boxes, torch.as_tensor(np.asarray(out["labels"], np.int64))


def collate(samples: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack images, pad boxes to the batch's largest count with a validity mask."""
    images = torch.stack([s[0] for s in samples])
    m = max(1, max(len(s[1]) for s in samples))
    boxes = torch.zeros(len(samples), m, 4)
    labels = torch.zeros(len(samples), m, dtype=torch.int64)
    valid = torch.zeros(len(samples), m, dtype=torch.bool)
    for i, (_, b, lab) in enumerate(samples):
        boxes[i, : len(b)], labels[i, : len(b)], valid[i, : len(b)] = b, lab, True
    return images, boxes, labels, valid


def usual_augment() -> A.Compose:
    """Per-sample albumentations with the same kinds of augmentation as `BatchAugment()`'s defaults."""
    return A.Compose(
        [
            A.Affine(scale=(0.6, 1.6), translate_percent=(-0.2, 0.2), keep_ratio=True, fill=114, p=1.0),
            A.HorizontalFlip(p=0.5),
            A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.02, p=1.0),
        ],
        bbox_params=A.BboxParams(
            format="pascal_voc", label_fields=["labels"], min_visibility=0.3, min_width=2, min_height=2, clip=True
        ),
    )


def rate(batches: Iterable, num_images: int, count: Callable[[object], int]) -> float:
    """Images per second over at least `num_images` images, after one warm-up batch."""
    it = iter(batches)
    next(it)
    seen, start = 0, time.perf_counter()
    for batch in it:
        seen += count(batch)
        if seen >= num_images:
            break
    return seen / (time.perf_counter() - start)


def store_batches(store: Store, batch_size: int, seed: int = 0):
    """Endless uint8 batches read in this (main) thread: a shuffled permutation, one sorted `read_batch` each."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(store), generator=gen)
        for k in range(0, len(store) - batch_size + 1, batch_size):
            yield store.read_batch(order[k : k + batch_size].sort().values.numpy())["images"]


def memcpy_batches(store: Store, batch_size: int, seed: int = 0):
    """Endless copies of `batch_size` contiguous images of the same memmap into one buffer: the ceiling.
    numpy's copy is one plain memcpy (no thread team)."""
    mmt = store.td["images"]
    src = np.memmap(mmt.filename, dtype=np.uint8, mode="r", shape=tuple(mmt.shape))
    dst = np.empty((batch_size, *src.shape[1:]), dtype=np.uint8)
    rng = np.random.default_rng(seed)
    while True:
        start = int(rng.integers(0, len(src) - batch_size + 1))
        np.copyto(dst, src[start : start + batch_size])
        yield dst


def loader_batches(store: Store, batch_size: int, augment: BatchAugment | None, as_float: bool = True):
    """Endless `BatchLoader` batches (epochs advance by themselves)."""
    loader = BatchLoader(store, batch_size, seed=0, drop_last=True, augment=augment, as_float=as_float)
    while True:
        yield from loader


def usual_batches(images: list[SourceImage], size: int, batch_size: int, workers: int, augment: A.Compose | None):
    sampler = RandomSampler(range(len(images)), num_samples=10**7, generator=torch.Generator().manual_seed(0))
    dataset = UsualDataset(images, size, augment)
    return DataLoader(dataset, batch_size, sampler=sampler, num_workers=workers, collate_fn=collate, drop_last=True)


def open_stores(name: str, size: int) -> tuple[Store, Store, list[SourceImage]]:
    source = DATA / DATASETS[name]
    stores = []
    for layout in ("raw", "compact"):
        out = OUT / f"{name}-{size}-{layout}"
        if not (out / "train" / "meta.json").is_file():
            prepare(source, out, image_size=size, workers=2, layout=layout, progress=False)
        stores.append(Store(out / "train"))
    train = next(d for d in read_dataset(source) if d.name == "train")
    return stores[0], stores[1], train.images


def warm(store: Store) -> None:
    """Read every image once, so that each row measures the page cache, not the disk."""
    for k in range(0, len(store), 64):
        store.read_batch(np.arange(k, min(k + 64, len(store))))


def table(title: str, header: list[str], rows: list[list[str]]) -> None:
    print(f"\n{title}\n")
    print("| " + " | ".join(header) + " |")
    print("| " + " | ".join("---" if i == 0 else "---:" for i in range(len(header))) + " |")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--image-size", type=int, default=640)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--images", type=int, default=320, help="images per measurement (usual pipeline)")
    args = parser.parse_args()
    bs, size, n = args.batch_size, args.image_size, args.images
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {bs}, {size} px, {n}+ images/row")

    rows1, rows2 = [], []
    for name in args.datasets:
        raw, compact, images = open_stores(name, size)
        warm(raw), warm(compact)
        numel = len  # a uint8 batch's first dimension is its number of images
        count = lambda b: len(b.index)  # noqa: E731
        r_raw = rate(loader_batches(raw, bs, None, as_float=False), 20 * n, count)
        r_compact = rate(loader_batches(compact, bs, None, as_float=False), n, count)
        r_usual = rate(usual_batches(images, size, bs, args.workers, None), n, lambda b: len(b[0]))
        r_copy = rate(memcpy_batches(raw, bs), 20 * n, numel)
        r_main = rate(store_batches(raw, bs), 4 * n, numel)
        rows1.append(
            [name, str(len(raw))]
            + [f"{r:,.0f}" for r in (r_raw, r_compact, r_usual, r_copy, r_main)]
            + [f"{r_raw / r_usual:.1f}x", f"{r_raw / r_copy:.2f}", f"{r_compact / r_usual:.1f}x"]
        )
        print(rows1[-1], flush=True)

        r_store_aug = rate(loader_batches(raw, bs, BatchAugment()), n, count)
        r_store_float = rate(loader_batches(raw, bs, None), 4 * n, count)
        r_usual_aug = rate(usual_batches(images, size, bs, args.workers, usual_augment()), n, lambda b: len(b[0]))
        rows2.append(
            [name]
            + [f"{r:,.0f}" for r in (r_store_aug, r_usual_aug, r_store_float)]
            + [f"{r_store_aug / r_usual_aug:.1f}x"]
        )
        print(rows2[-1], flush=True)

    table(
        "(1) uint8 batches, no augmentation (images/s)",
        [
            "dataset",
            "images",
            "store raw",
            "store compact",
            "usual (DataLoader, 2 workers, PIL)",
            "memcpy ceiling",
            "read_batch, main thread",
            "raw / usual",
            "raw / memcpy",
            "compact / usual",
        ],
        rows1,
    )
    table(
        "(2) training-ready float batches on the CPU (images/s)",
        [
            "dataset",
            "store + BatchAugment",
            "usual + albumentations (2 workers)",
            "store, float, no augmentation",
            "store+aug / usual+aug",
        ],
        rows2,
    )


if __name__ == "__main__":
    main()
