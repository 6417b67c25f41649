"""Data loading: images per second of the store against the usual pipeline and a memory copy, on the real datasets.

(1) uint8 batches, no augmentation: `BatchLoader(as_float=False)` on the raw layout and on the compact layout
    (JPEG decoded at load time); the usual pipeline, as torchvision users write it: a torch DataLoader with 2
    worker processes, PIL decode + letterbox (PIL resize, paste on grey) + `pil_to_tensor` per sample,
    `default_collate` for the images (boxes padded to the batch's largest count, as the store's are); and the
    memory-copy ceiling: the same number of bytes (16 contiguous images of the same memmap) copied into
    preallocated buffers, as the loader now does, both by numpy in one thread and by `workers` threads with the
    loader's own thread set-up (the ceiling is the faster of the two). For reference, `Store.read_batch`
    called in the main thread (fresh allocation, torch's 2-thread OpenMP team).
(2) training-ready batches (augmented float images in [0, 1]; normalisation is the model's): `BatchLoader` with
    `BatchAugment` against the usual pipeline with per-sample albumentations (the same kinds of augmentation:
    flip, scale + shift, brightness/contrast/saturation/hue jitter, boxes filtered), 2 workers; and
    `BatchLoader` with every image a mosaic (`mosaic=1.0`: up to four resampled tiles per image).

The machine this runs on is shared and its load drifts, so the pipelines are measured in `--rounds` alternating
rounds; each round starts a pipeline afresh, drops its start-up and prefetched batches, times it, and stops it
(so none refills its queues in the background while another is timed). A rate is all of a pipeline's images
over all its timed seconds. Stores are prepared once (train split, 640 px) into
benchmarks/out/data_loading/ and reused; the page cache is warm.

    .venv/bin/python benchmarks/data_loading.py
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path

import albumentations as A
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, RandomSampler, default_collate
from torchvision.transforms.functional import pil_to_tensor

from onedet.data.augment import BatchAugment
from onedet.data.formats import read_dataset
from onedet.data.loader import BatchLoader, _prefetched
from onedet.data.prepare import prepare
from onedet.data.records import SourceImage
from onedet.data.store import Store

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
OUT = Path(__file__).resolve().parent / "out" / "data_loading"
DATASETS = {"bccd": "bccd", "aquarium": "aquarium/aquarium_pretrain", "coco128": "coco128_coco"}


class UsualDataset(Dataset):
    """The usual per-sample pipeline: PIL decode, letterbox (PIL resize + paste on grey), `pil_to_tensor`, or
    albumentations then a float tensor."""

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
        boxes, labels = item.boxes_xyxy * scale, item.labels
        if self.augment is None:
            return pil_to_tensor(canvas), torch.from_numpy(boxes), torch.from_numpy(labels)
        out = self.augment(image=np.asarray(canvas), bboxes=boxes, labels=labels)
        image = torch.from_numpy(np.ascontiguousarray(out["image"].transpose(2, 0, 1))).float().div_(255)
        boxes = torch.as_tensor(np.asarray(out["bboxes"], np.float32).reshape(-1, 4))
        return image, boxes, torch.as_tensor(np.asarray(out["labels"], np.int64))


def collate(samples: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`default_collate` for the images (in a worker it stacks straight into shared memory); boxes padded to the
    batch's largest count with a validity mask (default_collate cannot stack ragged boxes)."""
    images = default_collate([s[0] for s in samples])
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


class Meter:
    """A pipeline measured in rounds. Each round starts it afresh, drops its first `1 + skip` batches (start-up,
    and what was prefetched meanwhile), times at least `num_images`, and stops it (threads joined, worker
    processes shut down), so that no pipeline refills its queues in the background while another is timed."""

    def __init__(self, make: Callable[[], Iterable], count: Callable[[object], int], skip: int) -> None:
        self.make, self.count, self.skip = make, count, skip
        self.images, self.seconds = 0, 0.0

    def measure(self, num_images: int) -> None:
        it = iter(self.make())
        for _ in range(1 + self.skip):
            next(it)
        seen, start = 0, time.perf_counter()
        while seen < num_images:
            seen += self.count(next(it))
        self.images, self.seconds = self.images + seen, self.seconds + time.perf_counter() - start
        if hasattr(it, "close"):  # a generator: closing it stops the loader's threads
            it.close()
        elif hasattr(it, "_shutdown_workers"):  # a DataLoader iterator: stop its worker processes now
            it._shutdown_workers()
        del it

    @property
    def rate(self) -> float:
        return self.images / self.seconds


def store_batches(store: Store, batch_size: int, seed: int = 0):
    """Endless uint8 batches read in this (main) thread: a shuffled permutation, one sorted `read_batch` each."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(store), generator=gen)
        for k in range(0, len(store) - batch_size + 1, batch_size):
            yield store.read_batch(order[k : k + batch_size].sort().values.numpy())["images"]


def memcpy_batches(store: Store, batch_size: int, seed: int = 0):
    """Endless copies of `batch_size` contiguous images of the same memmap into one preallocated buffer: the
    ceiling in one thread. numpy's copy is one plain memcpy (no thread team)."""
    mmt = store.td["images"]
    src = np.memmap(mmt.filename, dtype=np.uint8, mode="r", shape=tuple(mmt.shape))
    dst = np.empty((batch_size, *src.shape[1:]), dtype=np.uint8)
    rng = np.random.default_rng(seed)
    while True:
        start = int(rng.integers(0, len(src) - batch_size + 1))
        np.copyto(dst, src[start : start + batch_size])
        yield dst


def memcpy_threaded(store: Store, batch_size: int, workers: int, prefetch: int = 2):
    """The ceiling with the loader's parallelism: `workers` threads (the loader's own `_prefetched`, one intra-op
    thread each), each copying contiguous images into its own preallocated buffer (torch `copy_`, GIL released)."""

    def copies(seed: int):
        src = store._tensors["images"]  # the store's plain-tensor view of the memmap
        dst = torch.empty((batch_size, *src.shape[1:]), dtype=torch.uint8)
        rng = np.random.default_rng(seed)
        while True:
            start = int(rng.integers(0, len(src) - batch_size + 1))
            yield dst.copy_(src[start : start + batch_size])

    return _prefetched([copies(k) for k in range(workers)], prefetch)


def loader_batches(
    store: Store,
    batch_size: int,
    workers: int,
    augment: BatchAugment | None = None,
    as_float: bool = True,
    mosaic: float = 0.0,
):
    """Endless `BatchLoader` batches (epochs advance by themselves)."""
    loader = BatchLoader(
        store, batch_size, seed=0, drop_last=True, augment=augment, as_float=as_float, workers=workers, mosaic=mosaic
    )
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
    parser.add_argument("--images", type=int, default=320, help="images per measurement of the slow pipelines")
    parser.add_argument("--rounds", type=int, default=3, help="alternating measurement rounds per pipeline")
    args = parser.parse_args()
    bs, size, w, rounds = args.batch_size, args.image_size, args.workers, args.rounds
    per_round = max(bs, args.images // rounds)  # slow pipelines; fast ones take 20x as many images per round
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {bs}, {size} px, {w} workers, "
        f"{rounds} rounds of {per_round} images (slow pipelines) / {20 * per_round} (fast ones)"
    )

    loaded = lambda b: len(b.index)  # noqa: E731
    usual = lambda b: len(b[0])  # noqa: E731
    skip_loader, skip_usual = w * 2 + 1, w * 2 + 1  # prefetch 2 per worker (both pipelines), plus one in hand
    rows1, rows2 = [], []
    for name in args.datasets:
        raw, compact, images = open_stores(name, size)
        warm(raw), warm(compact)
        fast = {
            "raw": Meter(partial(loader_batches, raw, bs, w, as_float=False), loaded, skip_loader),
            "memcpy 1": Meter(partial(memcpy_batches, raw, bs), len, 0),
            f"memcpy {w}": Meter(partial(memcpy_threaded, raw, bs, w), len, w * 2 + 1),
        }
        slow = {
            "compact": Meter(partial(loader_batches, compact, bs, w, as_float=False), loaded, skip_loader),
            "usual": Meter(partial(usual_batches, images, size, bs, w, None), usual, skip_usual),
            "main thread": Meter(partial(store_batches, raw, bs), len, 0),
        }
        for _ in range(rounds):
            for meter in fast.values():
                meter.measure(20 * per_round)
            for meter in slow.values():
                meter.measure(per_round)
        r_raw, r_copy1, r_copyw = (m.rate for m in fast.values())
        r_compact, r_usual, r_main = (m.rate for m in slow.values())
        ceiling = max(r_copy1, r_copyw)
        rows1.append(
            [name, str(len(raw))]
            + [f"{r:,.0f}" for r in (r_raw, r_compact, r_usual, r_copy1, r_copyw, r_main)]
            + [f"{r_raw / r_usual:.1f}x", f"{r_raw / ceiling:.2f}", f"{r_compact / r_usual:.1f}x"]
        )
        print(rows1[-1], flush=True)

        meters = {
            "store+aug": Meter(partial(loader_batches, raw, bs, w, BatchAugment()), loaded, skip_loader),
            "usual+aug": Meter(partial(usual_batches, images, size, bs, w, usual_augment()), usual, skip_usual),
            "store float": Meter(partial(loader_batches, raw, bs, w), loaded, skip_loader),
            "store+mosaic": Meter(partial(loader_batches, raw, bs, w, BatchAugment(), mosaic=1.0), loaded, skip_loader),
        }
        for _ in range(rounds):
            meters["store+aug"].measure(per_round)
            meters["usual+aug"].measure(per_round)
            meters["store float"].measure(4 * per_round)
            meters["store+mosaic"].measure(per_round)
        r_store_aug, r_usual_aug, r_store_float, r_mosaic = (m.rate for m in meters.values())
        rows2.append(
            [name]
            + [f"{r:,.0f}" for r in (r_store_aug, r_usual_aug, r_store_float, r_mosaic)]
            + [f"{r_store_aug / r_usual_aug:.1f}x", f"{r_mosaic / r_store_aug:.2f}"]
        )
        print(rows2[-1], flush=True)

    table(
        "(1) uint8 batches, no augmentation (images/s)",
        [
            "dataset",
            "images",
            "store raw",
            "store compact",
            f"usual (DataLoader, {w} workers, PIL)",
            "memcpy, 1 thread",
            f"memcpy, {w} threads",
            "read_batch, main thread",
            "raw / usual",
            "raw / memcpy ceiling",
            "compact / usual",
        ],
        rows1,
    )
    table(
        "(2) training-ready float batches on the CPU (images/s)",
        [
            "dataset",
            "store + BatchAugment",
            f"usual + albumentations ({w} workers)",
            "store, float, no augmentation",
            "store + BatchAugment, mosaic 1",
            "store+aug / usual+aug",
            "mosaic / store+aug",
        ],
        rows2,
    )


if __name__ == "__main__":
    main()
