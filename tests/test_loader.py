"""BatchLoader: seeded order, same batches twice, epochs, DDP shards, exact resume, prefetch, no eval augmentation."""

from __future__ import annotations

from collections import deque
from itertools import chain

import pytest
import torch

from onedet.data import augment as augment_module
from onedet.data.augment import BatchAugment
from onedet.data.loader import Batch, BatchLoader
from onedet.data.prepare import prepare
from onedet.data.store import Store
from onedet.data.synthetic import make_synthetic


class RecordingStore(Store):
    """A real prepared store that also records each read, to check that a batch is one sorted read."""

    reads: list[list[int]]

    def read_batch(self, indices, device=None, pin_memory=False, out=None):
        self.reads.append(list(indices))
        return super().read_batch(indices, device=device, pin_memory=pin_memory, out=out)

    def rows(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        return super().read_batch(index)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> RecordingStore:
    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic(root / "src", num_images=23, image_size=32, seed=5, val_fraction=0.0)
    prepare(root / "src", root / "store", image_size=32, workers=1, progress=False)
    # prepare holds out a validation split from a single-split dataset; train keeps the rest
    opened = RecordingStore(root / "store" / "train")
    opened.reads = []
    return opened


def _indices(loader: BatchLoader) -> list[list[int]]:
    return [b.index.tolist() for b in loader]


def _targets(boxes: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor) -> list[list[tuple]]:
    """Each image's valid (box, label) pairs, in slot order."""
    return [
        [(tuple(b.tolist()), int(c)) for b, c, v in zip(bs, cs, vs) if v] for bs, cs, vs in zip(boxes, labels, valid)
    ]


def _flat(lists: list[list[int]]) -> list[int]:
    return list(chain.from_iterable(lists))


def test_batches_hold_the_store_rows(store):
    n = len(store)
    assert n % 5 != 0  # so there is a last, smaller batch
    loader = BatchLoader(store, batch_size=5, shuffle=True, seed=1)
    store.reads.clear()
    seen = []
    for batch in loader:
        assert isinstance(batch, Batch)
        assert batch.images.dtype == torch.float32 and batch.images.shape[1:] == (3, 32, 32)
        rows = store.rows(batch.index)
        torch.testing.assert_close(batch.images, rows["images"].float() / 255)
        # the store's boxes, labels and validity, the empty slots left out (`compact_slots`)
        assert _targets(*batch[1:4]) == _targets(rows["boxes_xyxy"], rows["labels"], rows["valid"])
        assert batch.valid.shape[1] == max(1, int(rows["valid"].sum(1).max()))
        seen += batch.index.tolist()
    assert sorted(seen) == list(range(n))  # one epoch sees every image once
    assert len(loader) == n // 5 + 1
    # one read per batch, its indices sorted (memmap locality)
    assert len(store.reads) == len(loader) and all(r == sorted(r) for r in store.reads)


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
    assert sizes == [5] * (len(store) // 5) and len(loader) == len(store) // 5


def test_augmented_batches_are_deterministic(store):
    def run(seed):
        return list(BatchLoader(store, 6, seed=seed, augment=BatchAugment(sizes=(32, 48))))

    a, b, c = run(0), run(0), run(1)
    for x, y in zip(a, b):
        for tx, ty in zip(x, y):
            assert torch.equal(tx, ty)
    assert not torch.equal(a[0].images, c[0].images)
    # the augmentation did something, and the boxes are different from the stored ones
    assert a[0].images.shape[-1] in (32, 48)
    assert not torch.equal(a[0].boxes_xyxy, store.rows(a[0].index)["boxes_xyxy"])


def test_no_augmentation_in_eval_mode(store):
    augment = BatchAugment().eval()
    batch = next(iter(BatchLoader(store, 4, augment=augment)))
    rows = store.rows(batch.index)
    torch.testing.assert_close(batch.images, rows["images"].float() / 255)
    assert _targets(*batch[1:4]) == _targets(rows["boxes_xyxy"], rows["labels"], rows["valid"])


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
    def run(**kwargs):
        return list(BatchLoader(store, 4, seed=4, augment=BatchAugment(), **kwargs))

    reference = run(prefetch=0)
    for kwargs in (dict(prefetch=3, workers=1), dict(prefetch=1, workers=2), dict(prefetch=2, workers=3)):
        batches = run(**kwargs)  # worker threads take turns: the same batches, in the same order
        assert len(batches) == len(reference)
        for x, y in zip(batches, reference):
            assert torch.equal(x.index, y.index) and torch.equal(x.images, y.images)

    class Broken(Store):
        def read_batch(self, indices, device=None, pin_memory=False, out=None):
            raise OSError("disk gone")

    broken = Broken(store.path)
    with pytest.raises(OSError, match="disk gone"):
        list(BatchLoader(broken, 4))


def test_bad_arguments(store):
    with pytest.raises(ValueError):
        BatchLoader(store, 0)
    with pytest.raises(ValueError):
        BatchLoader(store, 2, rank=0)
    with pytest.raises(ValueError):
        BatchLoader(store, 2, rank=2, world_size=2)


def test_compact_store_gives_the_same_batches(store, tmp_path):
    src = tmp_path / "src"
    make_synthetic(src, num_images=23, image_size=32, seed=5, val_fraction=0.0)
    prepare(src, tmp_path / "compact", image_size=32, workers=1, progress=False, layout="compact")
    compact = Store(tmp_path / "compact" / "train")
    for a, b in zip(BatchLoader(store, 8, seed=6), BatchLoader(compact, 8, seed=6)):
        assert torch.equal(a.index, b.index) and torch.equal(a.boxes_xyxy, b.boxes_xyxy)
        # JPEG (quality 95, chroma subsampled: noticeable on 32 px noise) of the same letterboxed pixels
        assert (a.images - b.images).abs().mean() < 0.06 < (a.images - b.images.roll(1, 0)).abs().mean()


def test_rank_and_world_size_default_to_torch_distributed(store, monkeypatch):
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 1)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 3)
    loader = BatchLoader(store, 3, seed=2)
    assert (loader.rank, loader.world_size) == (1, 3)
    assert _indices(loader) == _indices(BatchLoader(store, 3, seed=2, rank=1, world_size=3))


def _check_rows(store, index, images):
    assert torch.equal(torch.as_tensor(images), store.rows(index)["images"]), index.tolist()


def test_recycled_buffers_never_overwrite_a_batch_still_held(store):
    """uint8 batches come from a pool of recycled buffers: one the consumer (or a view, or a numpy array of it)
    still holds is never read into; dropped ones are reused."""
    loader = BatchLoader(store, 2, seed=7, as_float=False, prefetch=1, workers=2)
    capacity = loader._buffers.capacity
    # a consumer that drops each batch: its buffers come back (far fewer distinct buffers than batches; the
    # bound allows for batches allocated afresh when the pool is momentarily all in use)
    pointers = [b.images.data_ptr() for _ in range(3) for b in loader]
    assert len(set(pointers)) <= capacity + loader.workers < len(pointers)
    # a consumer that keeps the last `capacity + 2` batches, some only as a view or a numpy array: every batch
    # still equals a fresh read of its rows when it is let go, and at the end
    window: deque = deque()
    kept = []
    for step, batch in enumerate(chain(loader, loader, loader)):
        held = (batch.images, batch.images[1:], batch.images.numpy())[step % 3]
        rows = batch.index if step % 3 != 1 else batch.index[1:]
        window.append((rows, held))
        if step % 5 == 0:
            kept.append((batch.index, batch.images))  # kept to the end
        if len(window) > capacity + 2:
            _check_rows(store, *window.popleft())
        del batch, held
    for rows, held in [*window, *kept]:
        _check_rows(store, rows, held)
    assert len(loader._buffers) <= capacity


def test_float_batches_free_their_uint8_buffer_at_once(store):
    loader = BatchLoader(store, 3, seed=8, workers=2, prefetch=2)
    batches = list(loader)  # the float batches are new tensors: each worker needs one uint8 buffer at a time
    assert len(loader._buffers) <= loader.workers
    for batch in batches:
        torch.testing.assert_close(batch.images, store.rows(batch.index)["images"].float() / 255)


def test_mixup_batches_carry_both_images_boxes_and_are_deterministic(store):
    def run(mixup):
        return list(BatchLoader(store, 6, seed=0, augment=BatchAugment(), mixup=mixup, prefetch=0))

    plain, mixed, again = run(0.0), run(1.0), run(1.0)
    for x, y in zip(mixed, again):  # seeded per batch, as the augmentation: exact resume
        for tx, ty in zip(x, y):
            assert torch.equal(tx, ty)
    for p, q in zip(plain, mixed):
        # the augmentation draws come first, so an image's own boxes are the unmixed batch's, then its partner's
        own = _targets(*p[1:4])
        if len(p.index) > 1:  # with p = 1 every image is half its own, half its neighbour's
            torch.testing.assert_close(q.images, (p.images + p.images.roll(-1, 0)) / 2)
            assert _targets(*q[1:4]) == [own[i] + own[(i + 1) % len(own)] for i in range(len(own))]
        else:
            assert _targets(*q[1:4]) == own
    with pytest.raises(ValueError, match="mixup"):
        BatchLoader(store, 4, mixup=0.5)


def test_mosaic_batches_carry_four_images_boxes_until_mosaic_epochs(store):
    """With mosaic: each image's boxes come from its own tile and the next three images' (their labels follow
    them), the same batches twice (exact resume), and plain batches from `mosaic_epochs` on."""

    def run(**kwargs):
        loader = BatchLoader(store, 6, seed=0, augment=BatchAugment(), prefetch=0, **kwargs)
        return [list(loader) for _ in range(2)]  # epochs 0 and 1

    plain = run()
    tiled, again = run(mosaic=1.0, mosaic_epochs=1), run(mosaic=1.0, mosaic_epochs=1)
    for x, y in zip(tiled[0] + tiled[1], again[0] + again[1]):
        for tx, ty in zip(x, y):
            assert torch.equal(tx, ty)
    others = 0
    for p, q in zip(plain[0], tiled[0]):
        raw = store.rows(p.index)
        if len(p.index) < 2:  # a batch of one is never tiled: the plain augmentation
            assert all(torch.equal(tp, tq) for tp, tq in zip(p, q))
            continue
        tiles = augment_module.mosaic_slots(raw["labels"]), augment_module.mosaic_slots(raw["valid"])
        m = raw["valid"].shape[1]
        for i in range(len(p.index)):
            mine = [int(c) for c, v in zip(*(t[i] for t in tiles)) if v]  # own tile first, then the next three
            got = q.labels[i][q.valid[i]].tolist()
            assert all(got.count(c) <= mine.count(c) for c in set(got)), "labels of the four tiles' boxes only"
            others += int(q.valid[i].sum()) > int(raw["valid"][i, :m].sum())
        assert q.valid.shape[1] == max(1, int(q.valid.sum(1).max())), "no slot that no image uses"
    assert others > 0, "boxes of the other tiles are in view"
    for p, q in zip(plain[1], tiled[1]):  # epoch 1 is past mosaic_epochs: the plain augmentation, draw for draw
        for tp, tq in zip(p, q):
            assert torch.equal(tp, tq)
    with pytest.raises(ValueError, match="mosaic"):
        BatchLoader(store, 4, mosaic=0.5)


def test_compact_slots_moves_valid_boxes_first_and_cuts_the_empty_slots():
    from onedet.data.loader import compact_slots

    boxes = torch.arange(2 * 5 * 4, dtype=torch.float32).view(2, 5, 4)
    labels = torch.arange(10).view(2, 5)
    valid = torch.tensor([[False, True, False, True, False], [True, False, False, False, False]])
    b, c, v = compact_slots(boxes, labels, valid)
    assert v.tolist() == [[True, True], [True, False]]
    assert c[:, 0].tolist() == [1, 5] and c[0, 1] == 3  # each image's valid boxes, in their order
    assert torch.equal(b[0], boxes[0, [1, 3]]) and torch.equal(b[1, 0], boxes[1, 0])
    none = compact_slots(boxes, labels, torch.zeros_like(valid))
    assert none[2].shape == (2, 1) and not none[2].any(), "one slot is kept when no image has a box"
    full = torch.ones_like(valid)
    assert all(x is y for x, y in zip(compact_slots(boxes, labels, full), (boxes, labels, full)))
