"""Cached backbone features (`--cache-features`): with a frozen backbone, run it once per image, not per epoch.

A frozen backbone maps the same image to the same features every epoch, so on a CPU, where the backbone is
most of a training step (BENCHMARKS.md, Training), computing its features once and training
the neck and head on them makes epochs many times faster. The cache holds, for every store image, the features
of the image and of its horizontal flip (ViT features are not flip-equivariant, so the flip is computed, not
mirrored), as one float16 memmap `[N, 2, T*C, h, w]` (T tapped blocks of C channels) in `RUN/cache/`. The
features are `Detector.forward_features` (the neck's normalised taps, which have no parameters), so an epoch on
the cache starts at the neck's fuse conv (`Detector.forward_head`).

What is lost: every augmentation but the horizontal flip. Scale jitter, crops, aspect jitter, colour jitter
and multi-scale training need the backbone to see the changed pixels, so they cannot be cached. On a few
hundred images that loss of augmentation costs accuracy over long schedules; the cache suits quick
iterations, linear-probe-style training and large datasets, while the default (no cache) keeps them all.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from onedet.atomic import write_json
from onedet.data.loader import Batch, BatchLoader
from onedet.train import amp
from onedet.train.distributed import barrier

if TYPE_CHECKING:
    from onedet.model.detector import Detector

# What a cache file holds; part of its key, so a cache written by another version is recomputed, not misread.
CACHE_FORMAT = "normalized-taps-1"


def image_fingerprints(images_uint8: Tensor) -> Tensor:
    """Two int64 checksums per image `[B, 3, H, W]` uint8 -> `[B, 2]`, to find an image's cached features."""
    flat = images_uint8.reshape(len(images_uint8), -1).to(torch.int64)
    weights = torch.arange(flat.shape[1], dtype=torch.int64) % 251 + 1
    return torch.stack([flat.sum(1), (flat * weights.to(flat.device)).sum(1)], dim=1)


class FeatureCache:
    """The features of one store split: `read(indices, flips) -> float [B, T*C, h, w]` (`Detector.forward_features`)."""

    def __init__(self, folder: Path, name: str) -> None:
        self.folder, self.name = Path(folder), name
        self.meta = json.loads((self.folder / f"{name}.json").read_text())
        self.array = np.load(self.folder / f"{name}.npy", mmap_mode="r")
        self.fingerprints = torch.from_numpy(np.load(self.folder / f"{name}.fingerprints.npy"))
        self._by_fingerprint = {tuple(fp): i for i, fp in enumerate(self.fingerprints.tolist())}

    def __len__(self) -> int:
        return len(self.array)

    def read(self, indices: Tensor, flips: Tensor | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        """Features of store images `indices` (of their flips where `flips`), converted to `dtype` in one pass:
        under bf16 autocast the neck's first conv then takes them as they are."""
        idx = np.asarray(indices, dtype=np.int64)
        which = np.zeros(len(idx), dtype=np.int64) if flips is None else np.asarray(flips, dtype=np.int64)
        return torch.from_numpy(self.array[idx, which]).to(dtype)

    def lookup(self, images_uint8: Tensor) -> Tensor:
        """Store indices of images by content (KeyError for an image that is not in the cache)."""
        return torch.tensor([self._by_fingerprint[tuple(fp)] for fp in image_fingerprints(images_uint8).tolist()])

    @staticmethod
    def key(model: Detector, store: Any) -> str:
        """What the cache depends on: the backbone's config and weights, what it stores, and the store split."""
        weights = sum(float(p.detach().double().sum()) for p in model.backbone.parameters())
        text = json.dumps(
            [
                CACHE_FORMAT,
                model.config.to_dict(),
                f"{weights:.10e}",
                str(Path(store.path).resolve()),
                len(store),
                store.files[:5],
            ]
        )
        return hashlib.sha1(text.encode()).hexdigest()

    @classmethod
    def build(
        cls,
        model: Detector,
        store: Any,
        folder: Path,
        name: str,
        *,
        batch_size: int,
        device: torch.device,
        dtype: torch.dtype | None,
        rank: int = 0,
        world_size: int = 1,
        progress: bool = True,
    ) -> FeatureCache:
        """Compute (or reuse, when its key matches) the cache of `store` in `folder/name.*`; every rank computes
        every `world_size`-th image into the shared file."""
        folder = Path(folder)
        key = cls.key(model, store)
        meta_path = folder / f"{name}.json"
        if meta_path.is_file() and json.loads(meta_path.read_text()).get("key") == key:
            return cls(folder, name)
        model.eval()
        with torch.inference_mode():
            probe = torch.zeros(1, 3, store.image_size, store.image_size, device=device)
            shape = (len(store), 2, *model.forward_features(probe).shape[1:])
        array_path, fp_path = folder / f"{name}.npy", folder / f"{name}.fingerprints.npy"
        if rank == 0:
            folder.mkdir(parents=True, exist_ok=True)
            meta_path.unlink(missing_ok=True)
            np.lib.format.open_memmap(array_path, mode="w+", dtype=np.float16, shape=shape).flush()
            np.lib.format.open_memmap(fp_path, mode="w+", dtype=np.int64, shape=(len(store), 2)).flush()
        barrier()
        array = np.load(array_path, mmap_mode="r+")
        fingerprints = np.load(fp_path, mmap_mode="r+")
        mine = np.arange(rank, len(store), world_size)
        chunks = [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]
        if progress and rank == 0:
            from tqdm import tqdm

            chunks = tqdm(chunks, desc=f"caching {name} features", unit="batch", leave=False)
        with torch.inference_mode():
            for idx in chunks:
                raw = store.read_batch(idx, device=device)
                images_uint8 = torch.as_tensor(raw["images"])
                images = images_uint8.to(device).float() / 255
                for flip in (0, 1):
                    batch = images.flip(-1) if flip else images
                    with amp.autocast(device, dtype):
                        features = model.forward_features(batch)
                    array[idx, flip] = features.cpu().numpy().astype(np.float16)
                fingerprints[idx] = image_fingerprints(images_uint8.cpu()).numpy()
        array.flush()
        fingerprints.flush()
        del array, fingerprints
        barrier()
        if rank == 0:
            write_json(meta_path, {"key": key, "shape": list(shape), "format": CACHE_FORMAT}, indent=None)
        barrier()
        return cls(folder, name)


class CachedFeatureLoader:
    """`BatchLoader`'s interface over a feature cache: `Batch.images` holds features `[B, T*C, h, w]`.

    Shuffling, DDP shards and the resumable state are those of an inner `BatchLoader` over the same store;
    each sample is flipped with probability `flip`, seeded like the loader's augmentation.
    """

    def __init__(
        self,
        cache: FeatureCache,
        store: Any,
        loader: BatchLoader,
        flip: float = 0.5,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        """`dtype`: what the features are read as (the neck's autocast dtype, or float32)."""
        self.cache, self.store, self.loader, self.flip, self.dtype = cache, store, loader, flip, dtype

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def epoch(self) -> int:
        return self.loader.epoch

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def state_dict(self) -> dict[str, int]:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.loader.load_state_dict(state)

    def __iter__(self) -> Iterator[Batch]:
        loader = self.loader
        epoch, start, size = loader.epoch, loader.position, loader.batch_size
        order = loader.shard_indices(epoch)
        width = float(self.store.image_size)
        for step in range(start, len(loader)):
            index = order[step * size : (step + 1) * size].sort().values
            seed = np.random.SeedSequence([loader.seed, epoch, step, loader.rank, 1]).generate_state(1)[0]
            generator = torch.Generator().manual_seed(int(seed))
            flips = torch.rand(len(index), generator=generator) < self.flip
            features = self.cache.read(index, flips, self.dtype)
            raw = self.store.read_batch(index.numpy())
            boxes = torch.as_tensor(raw["boxes_xyxy"]).float().clone()
            valid = torch.as_tensor(raw["valid"]).bool()
            flipped = boxes[flips]
            boxes[flips] = torch.stack(
                [width - flipped[..., 2], flipped[..., 1], width - flipped[..., 0], flipped[..., 3]], -1
            )
            boxes = boxes * valid[..., None]
            device = loader.device
            loader.position = step + 1
            yield Batch(
                features.to(device, non_blocking=True),
                boxes.to(device),
                torch.as_tensor(raw["labels"]).long().to(device),
                valid.to(device),
                index,
            )
        loader.epoch, loader.position = epoch + 1, 0


class CachedFeatureModel(nn.Module):
    """A detector that takes its backbone features from a cache: what evaluation runs in cached mode.

    `forward(images [B, 3, H, W] in [0, 1])` finds each image's cached features by content (images of the
    cached store split only) and runs the neck and head on them.
    """

    def __init__(self, detector: Detector, cache: FeatureCache) -> None:
        super().__init__()
        self.detector = detector
        self.cache = cache
        self.config = detector.config

    def forward(self, images: Tensor) -> Any:
        index = self.cache.lookup((images * 255).round().to(torch.uint8).cpu())
        features = self.cache.read(index).to(images.device)
        return self.detector.forward_head(features)


def cached_loaders(
    detector: Detector,
    index_loader: BatchLoader,
    val_store: Any,
    folder: Path,
    *,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype | None,
    flip: float,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
) -> tuple[CachedFeatureLoader, FeatureCache | None]:
    """The training loader over the feature cache of `index_loader`'s store (computed or reused in `folder`), and
    the cache of `val_store` (None without one). Features are read in `dtype` (the autocast plan; None: fp32)."""
    build: dict[str, Any] = dict(
        batch_size=batch_size, device=device, dtype=dtype, rank=rank, world_size=world_size, progress=progress
    )
    store = index_loader.store
    cache = FeatureCache.build(detector, store, folder, "train", **build)
    loader = CachedFeatureLoader(cache, store, index_loader, flip=flip, dtype=dtype or torch.float32)
    val_cache = FeatureCache.build(detector, val_store, folder, "val", **build) if val_store is not None else None
    return loader, val_cache
