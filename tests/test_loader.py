"""BatchLoader: seeded order, same batches twice, epochs, DDP shards, exact resume, prefetch, no eval augmentation."""

from __future__ import annotations

from itertools import chain
from pathlib import Path

import numpy as np
import pytest
import torch
from tensordict import TensorDict

from onedet.data.augment import BatchAugment
from onedet.data.loader import Batch, BatchLoader
from onedet.data.synthetic import render_synthetic


class TinyStore:
    """A store in design.md's schema, memory-mapped with tensordict, read the way `Store.read_batch` does."""

    def __init__(self, root: Path, num_images: int = 23, size: int = 32) -> None:
        images, targets = render_synthetic(num_images, size, seed=5)
        m = max(len(b) for b, _ in targets)
        boxes = torch.zeros(num_images, m, 4)
        labels = torch.zeros(num_images, m, dtype=torch.int64)
        valid = torch.zeros(num_images, m, dtype=torch.bool)
        for i, (b, lab) in enumerate(targets):
            boxes[i, : len(b)], labels[i, : len(b)], valid[i, : len(b)] = (
                torch.from_numpy(b),
                torch.from_numpy(lab),
                True,
            )
        td = TensorDict(
            images=torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
            boxes_xyxy=boxes,
            labels=labels,
            valid=valid,
            batch_size=[num_images],
        )
        self.td = td.memmap_(root / "td")
        self.reads = 0

    def __len__(self) -> int:
        return self.td.batch_size[0]

    def read_batch(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        assert np.all(np.diff(indices) >= 0), "the loader sorts each batch's indices"
        self.reads += 1
        idx = torch.from_numpy(indices)
        return {k: self.td[k].index_select(0, idx) for k in ("images", "boxes_xyxy", "labels", "valid")}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> TinyStore:
    return TinyStore(tmp_path_factory.mktemp("store"))


def _indices(loader: BatchLoader) -> list[list[int]]:
    return [b.index.tolist() for b in loader]


def _flat(lists: list[list[int]]) -> list[int]:
    return list(chain.from_iterable(lists))


def test_batches_hold_the_store_rows(store):
    loader = BatchLoader(store, batch_size=5, shuffle=True, seed=1)
    seen = []
    for batch in loader:
        assert isinstance(batch, Batch)
        assert batch.images.dtype == torch.float32 and batch.images.shape[1:] == (3, 32, 32)
        idx = batch.index
        torch.testing.assert_close(batch.images, store.td["images"][idx].float() / 255)
        torch.testing.assert_close(batch.boxes_xyxy, store.td["boxes_xyxy"][idx])
        assert torch.equal(batch.labels, store.td["labels"][idx]) and torch.equal(batch.valid, store.td["valid"][idx])
        seen += idx.tolist()
    assert sorted(seen) == list(range(len(store)))  # one epoch sees every image once
    assert len(loader) == 5 and store.reads >= 5  # 23 images: 4 full batches + 1 of 3


def test_order_is_seeded_and_changes_with_epoch(store):
    a, b = BatchLoader(store, 4, seed=0), BatchLoader(store, 4, seed=0)
    assert _indices(a) == _indices(b)
    assert _indices(BatchLoader(store, 4, seed=1)) != _indices(BatchLoader(store, 4, seed=0))
    first, second = _indices(a), _indices(a)  # the epoch advances by itself after a full pass
    assert first != second and a.epoch == 3
    a.set_epoch(1)
    assert _indices(a) == first
    plain = BatchLoader(store, 4, shuffle=False)
    assert _flat(_indices(plain)) == list(range(len(store)))


def test_drop_last(store):
    loader = BatchLoader(store, 5, drop_last=True)
    sizes = [len(b.index) for b in loader]
    assert sizes == [5, 5, 5, 5] and len(loader) == 4


def test_augmented_batches_are_deterministic(store):
    def run(seed):
        return list(BatchLoader(store, 6, seed=seed, augment=BatchAugment(sizes=(32, 48))))

    a, b, c = run(0), run(0), run(1)
    for x, y in zip(a, b):
        for tx, ty in zip(x, y):
            assert torch.equal(tx, ty)
    assert not torch.equal(a[0].images, c[0].images)
    # the augmentation did something, and the boxes are different from the stored ones
    assert not torch.equal(a[0].images, store.td["images"][a[0].index].float() / 255)


def test_no_augmentation_in_eval_mode(store):
    augment = BatchAugment().eval()
    batch = next(iter(BatchLoader(store, 4, augment=augment)))
    torch.testing.assert_close(batch.images, store.td["images"][batch.index].float() / 255)
    torch.testing.assert_close(batch.boxes_xyxy, store.td["boxes_xyxy"][batch.index])


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_ddp_shards_are_disjoint_and_cover(store, world_size):
    n = len(store)
    shards = [_indices(BatchLoader(store, 3, seed=2, rank=r, world_size=world_size)) for r in range(world_size)]
    flat = [_flat(s) for s in shards]
    assert len({len(f) for f in flat}) == 1  # every rank gets the same number of images
    assert {len(s) for s in shards} == {len(BatchLoader(store, 3, rank=0, world_size=world_size))}
    everything = _flat(flat)
    assert set(everything) == set(range(n))
    padding = len(flat[0]) * world_size - n
    assert padding < world_size and len(everything) - len(set(everything)) == padding
    if padding == 0:
        assert all(set(a).isdisjoint(b) for i, a in enumerate(flat) for b in flat[i + 1 :])


def test_state_dict_resumes_exactly(store):
    def make():
        return BatchLoader(store, 4, seed=3, augment=BatchAugment())

    reference = make()
    reference.set_epoch(2)
    expected = list(reference)
    stopped = make()
    stopped.set_epoch(2)
    it = iter(stopped)
    for _ in range(2):
        next(it)
    state = stopped.state_dict()
    it.close()
    assert state == {"epoch": 2, "position": 2, "seed": 3}

    resumed = make()
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # a training loop calls this at the top of the epoch; it must keep the position
    rest = list(resumed)
    assert len(rest) == len(expected) - 2
    for x, y in zip(rest, expected[2:]):
        assert torch.equal(x.index, y.index) and torch.equal(x.images, y.images)
        assert torch.equal(x.boxes_xyxy, y.boxes_xyxy) and torch.equal(x.valid, y.valid)
    assert resumed.state_dict() == {"epoch": 3, "position": 0, "seed": 3}


def test_prefetch_matches_synchronous_and_reraises(store):
    a = _indices(BatchLoader(store, 4, seed=4, prefetch=0))
    b = _indices(BatchLoader(store, 4, seed=4, prefetch=3))
    assert a == b

    class Broken(TinyStore):
        def read_batch(self, indices):
            raise OSError("disk gone")

    broken = Broken.__new__(Broken)
    broken.td = store.td
    with pytest.raises(OSError, match="disk gone"):
        list(BatchLoader(broken, 4))


def test_bad_arguments(store):
    with pytest.raises(ValueError):
        BatchLoader(store, 0)
    with pytest.raises(ValueError):
        BatchLoader(store, 2, rank=0)
    with pytest.raises(ValueError):
        BatchLoader(store, 2, rank=2, world_size=2)
