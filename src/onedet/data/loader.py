"""`BatchLoader`: training-ready batches from a store with no per-sample Python work.

Like nanoGPT's `get_batch`, a batch is one read of the memory map: the epoch's indices are a seeded permutation,
each batch's indices are sorted (memmap locality; the order inside a batch does not matter) and read with one
`store.read_batch(indices)`. Background threads (`workers`, each with one intra-op thread: no OpenMP team to
stall on a busy CPU) keep `prefetch` batches ready each, pinned when the target is CUDA, so reading overlaps
compute. The uint8 -> float conversion and the augmentation run as batch ops: on the GPU after a non-blocking
copy when there is one, otherwise in the worker threads, which then process whole batches in parallel.

On the CPU, uint8 image batches are read into recycled buffers (`onedet.data.buffers.BufferPool`): a fresh
16 x 640 px batch is a fresh 19.7 MB mapping whose thousands of page faults cost more than the copy itself
(BENCHMARKS.md). A buffer is reused only once nothing outside the pool references its memory any more, so a batch
the consumer keeps is never overwritten; with `as_float=True` the uint8 buffer is free again as soon as the float batch
exists. Pinned batches for a GPU are not pooled here: torch's caching host allocator already recycles pinned
blocks, and only after the non-blocking copies that read them have completed.

Everything random is a function of (seed, epoch, batch position, rank): the same seed gives the same batches,
augmentation included, and `state_dict()` / `load_state_dict()` resume exactly where a run stopped.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple, Protocol, cast

import numpy as np
import torch
from torch import Tensor

from onedet.data.augment import BatchAugment, mix_up, mosaic_slots, tiles, to_float
from onedet.data.buffers import BufferPool


class Batch(NamedTuple):
    """One batch (design.md "Batches"); boxes are in the batch's own pixel coordinates."""

    images: Tensor
    """float [B, 3, S, S] in [0, 1], on the loader's device."""
    boxes_xyxy: Tensor
    """float32 [B, M, 4]."""
    labels: Tensor
    """int64 [B, M]."""
    valid: Tensor
    """bool [B, M]."""
    index: Tensor  # type: ignore[assignment]  # shadows tuple.index(); a public field name, kept
    """int64 [B]: store indices, for evaluation bookkeeping."""


class BatchSource(Protocol):
    """What the loader needs from a store (`onedet.data.store.Store` provides it)."""

    def __len__(self) -> int: ...

    def read_batch(
        self,
        indices: np.ndarray,
        device: torch.device | None = None,
        pin_memory: bool = False,
        out: Mapping[str, Tensor] | None = None,
    ) -> Mapping[str, Any]:
        """images uint8 [B, 3, S, S] (compact stores may decode on `device`), boxes_xyxy, labels, valid; the
        images are read into `out["images"]` when given."""
        ...


def _seed_for(*keys: int) -> int:
    """A well-mixed 63-bit seed from a tuple of integers (SeedSequence hashes them)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(2, np.uint64)[0] >> np.uint64(1))


def _as_tensor(x: Any) -> Tensor:
    return x if isinstance(x, Tensor) else torch.from_numpy(np.ascontiguousarray(x))


def compact_slots(boxes_xyxy: Tensor, labels: Tensor, valid: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The batch's valid boxes moved to the front of each image's slots (in their order), and the slots cut to the
    most any image of the batch has (at least one). Stores pad every image to the split's largest box count, and a
    mosaic (four images' slots) or mixup (two) leaves most of them empty, while the matchers' cost grows with the
    slots (`[B, N, M]`), not with the boxes (BENCHMARKS.md, "Mosaic"): the loss never sees a slot no image uses."""
    m = max(1, int(valid.sum(1).max())) if valid.numel() else valid.shape[1]
    if m >= valid.shape[1]:
        return boxes_xyxy, labels, valid
    order = torch.argsort((~valid).to(torch.uint8), dim=1, stable=True)[:, :m]  # valid slots first, in order
    return (
        boxes_xyxy.gather(1, order[..., None].expand(-1, -1, boxes_xyxy.shape[-1])),
        labels.gather(1, order),
        valid.gather(1, order),
    )


class BatchLoader:
    """Iterate over a store in batches; one pass of `for batch in loader` is one epoch.

    `shuffle`: a permutation seeded with `seed + epoch` (else store order). Under DDP (`rank`/`world_size`,
    taken from `torch.distributed` when it is initialised) each rank takes every `world_size`-th index of the
    permutation, padded by wrapping around to an equal length (as `DistributedSampler` does), so the shards
    are disjoint up to the padding and cover the store. `drop_last` drops a last, smaller batch. `augment`
    (a `BatchAugment`, used only while it is in training mode) runs on `device` as one batch op. `as_float=False`
    yields the store's uint8 images as they are (no augmentation). `mixup` (with `augment`): the probability that an
    augmented image is blended with another of its batch and takes its boxes too (`augment.mix_up`). `mosaic` (with
    `augment`): the probability that an image's augmentation window is taken out of a 2 x 2 tiling of it and the
    next three images of its batch (`BatchAugment`), in the epochs before `mosaic_epochs` (default: every epoch).
    Every batch's box slots are cut to the most boxes any of its images has (`compact_slots`). `workers`
    background threads each prepare whole batches, `prefetch` batches ahead (`prefetch=0`: everything in the
    calling thread).
    After a full pass the epoch advances by itself; `set_epoch(e)` chooses it explicitly.
    """

    def __init__(
        self,
        store: BatchSource,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        device: torch.device | str | None = None,
        augment: BatchAugment | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        prefetch: int = 2,
        workers: int = 2,
        as_float: bool = True,
        mixup: float = 0.0,
        mosaic: float = 0.0,
        mosaic_epochs: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not as_float and augment is not None:
            raise ValueError("augmentation makes float images: pass as_float=True with augment")
        if mixup and augment is None:
            raise ValueError("mixup runs after the batch augmentation: pass augment with mixup")
        if mosaic and augment is None:
            raise ValueError("mosaic is part of the batch augmentation: pass augment with mosaic")
        if (rank is None) != (world_size is None):
            raise ValueError("pass both rank and world_size, or neither")
        if rank is None and torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        self.rank, self.world_size = rank or 0, world_size or 1
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in 0..{self.world_size - 1}")
        self.store, self.batch_size, self.shuffle, self.seed = store, batch_size, shuffle, seed
        self.drop_last, self.augment, self.prefetch, self.as_float = drop_last, augment, max(0, prefetch), as_float
        self.mixup, self.mosaic, self.mosaic_epochs = mixup, mosaic, mosaic_epochs
        self.workers = max(1, workers)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.epoch = 0
        self.position = 0  # batches of the current epoch already handed out
        self._pin = self.device.type == "cuda"
        # in flight at once: per worker `prefetch` queued, one being made and the last one handed over (its frame
        # still refers to it), plus the batch the consumer holds and its previous one; one more for slack
        self._buffers = BufferPool(self.workers * (self.prefetch + 2) + 3)
        size = getattr(store, "image_size", None)  # else learnt from the first batch
        self._image_shape: tuple[int, ...] | None = (3, size, size) if isinstance(size, int) else None

    # --- indices ---------------------------------------------------------------------------------------------

    def shard_indices(self, epoch: int | None = None) -> Tensor:
        """This rank's store indices for an epoch, in the order they are batched (int64 [num_per_rank])."""
        epoch = self.epoch if epoch is None else epoch
        n = len(self.store)
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + epoch))
        else:
            order = torch.arange(n)
        total = math.ceil(n / self.world_size) * self.world_size
        if total > n:  # pad by wrapping around, so every rank gets the same number of batches
            order = torch.cat([order, order.repeat(math.ceil((total - n) / n))[: total - n]])
        return order[self.rank :: self.world_size]

    def __len__(self) -> int:
        per_rank = math.ceil(len(self.store) / self.world_size)
        return per_rank // self.batch_size if self.drop_last else math.ceil(per_rank / self.batch_size)

    # --- state -----------------------------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch; the position is kept when it is the current epoch (so a resumed run continues)."""
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        if int(state["seed"]) != self.seed:
            raise ValueError(f"loader state was saved with seed {state['seed']}, this loader has seed {self.seed}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    # --- iteration -------------------------------------------------------------------------------------------

    def _read(self, indices: Tensor) -> dict[str, Tensor]:
        """One memmap read of a batch (sorted indices), pinned when the batch is going to a GPU."""
        indices = indices.sort().values
        # The store writes straight into pinned buffers, and a compact store decodes its JPEGs on the GPU; on the
        # CPU it reads into a recycled buffer when one is free (module docstring).
        shape = self._image_shape
        buffer = None if self._pin or shape is None else self._buffers.take((len(indices), *shape), torch.uint8)
        kwargs = {} if buffer is None else {"out": {"images": buffer}}
        raw = self.store.read_batch(
            indices.numpy(), device=self.device if self._pin else None, pin_memory=self._pin, **kwargs
        )
        out = {k: _as_tensor(raw[k]) for k in ("images", "boxes_xyxy", "labels", "valid")}
        images = out["images"]
        if self._image_shape is None and images.dtype == torch.uint8 and images.device.type == "cpu":
            self._image_shape = tuple(images.shape[1:])
        out["index"] = indices.pin_memory() if self._pin else indices
        return out

    def _finish(self, raw: dict[str, Tensor], epoch: int, step: int) -> Batch:
        """To the device, uint8 -> float in [0, 1], then the batch augmentation (seeded by epoch, step, rank)."""
        t = {k: v.to(self.device, non_blocking=True) for k, v in raw.items()}
        images, boxes, labels, valid = t["images"], t["boxes_xyxy"].float(), t["labels"].long(), t["valid"].bool()
        if self.augment is not None and self.augment.training:
            # the augmentation takes the uint8 images: it resamples them as uint8 and its colour map is the float
            # conversion (into recycled float buffers on the CPU, augment.py)
            generator = torch.Generator().manual_seed(_seed_for(self.seed, epoch, step, self.rank))
            mosaic = self.mosaic if self.mosaic_epochs is None or epoch < self.mosaic_epochs else 0.0
            images, boxes, valid = self.augment(images, boxes, valid, generator=generator, mosaic=mosaic)
            if tiles(len(labels), mosaic):
                labels = mosaic_slots(labels)
            images, boxes, labels, valid = mix_up(images, boxes, labels, valid, self.mixup, generator)
        elif self.as_float:
            images = to_float(images)
        return Batch(images, *compact_slots(boxes, labels, valid), t["index"])

    def _produce(self, epoch: int, steps: range) -> Iterator[Batch | dict[str, Tensor]]:
        """What a background thread makes: finished batches on the CPU, raw pinned ones for a GPU."""
        indices = self.shard_indices(epoch)
        for step in steps:
            raw = self._read(indices[step * self.batch_size : (step + 1) * self.batch_size])
            if self._pin:
                yield raw
                continue
            batch = self._finish(raw, epoch, step)
            del raw  # with float images the uint8 buffer is free for the next read now
            yield batch

    def __iter__(self) -> Iterator[Batch]:
        epoch, start = self.epoch, self.position
        if self.prefetch == 0:
            items = self._produce(epoch, range(start, len(self)))
        else:  # worker k makes steps start + k, start + k + workers, ...; they are handed out in step order
            parts = [self._produce(epoch, range(start + k, len(self), self.workers)) for k in range(self.workers)]
            items = _prefetched(parts, self.prefetch)
        step = start
        for item in items:
            # _produce yields raw dicts exactly when pinning, finished Batches otherwise
            batch = self._finish(cast(dict[str, Tensor], item), epoch, step) if self._pin else cast(Batch, item)
            step += 1
            self.position = step  # counted before the yield: a checkpoint taken now resumes after this batch
            yield batch
        self.epoch, self.position = epoch + 1, 0


def _prefetched(parts: list[Iterator[Any]], depth: int) -> Iterator[Any]:
    """Run each iterator in its own daemon thread, `depth` items ahead, and yield their items round-robin
    (part 0's first, part 1's first, ..., part 0's second, ...). Errors are re-raised here; stops on close."""
    queues: list[queue.Queue] = [queue.Queue(maxsize=depth) for _ in parts]
    stop = threading.Event()
    done = object()

    def work(items: Iterator[Any], q: queue.Queue) -> None:
        # One intra-op thread per worker (thread-local in torch): a batch read is a memory copy that one core
        # saturates, and with several workers the batches already run in parallel. OpenMP teams on this
        # oversubscribed CPU were measured ~10x slower for `index_select` (threads wait at barriers).
        torch.set_num_threads(1)
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as error:  # handed to the consumer, which re-raises it with its traceback
            q.put(error)

    threads = [
        threading.Thread(target=work, args=(items, q), name=f"onedet-loader-{k}", daemon=True)
        for k, (items, q) in enumerate(zip(parts, queues))
    ]
    for thread in threads:
        thread.start()
    try:
        while True:
            for q in queues:
                item = q.get()
                if item is done:  # parts take turns, so the first one to finish means all are done
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
    finally:
        stop.set()
        for thread, q in zip(threads, queues):
            while thread.is_alive():  # unblock a producer waiting on a full queue
                try:
                    q.get_nowait()
                except queue.Empty:
                    thread.join(timeout=0.05)
