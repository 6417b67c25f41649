"""Data-parallel training on the CPU (gloo, 2 processes): ranks stay in sync, read their own shards, and only
rank 0 writes."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from train_helpers import make_store, tiny_config

from onedet.checkpoint import read_train_state
from onedet.data.store import Store

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, store: Path, out: Path, records: Path) -> None:
    # What torchrun would set.
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD)
    )
    torch.set_num_threads(1)
    import onedet.train.loop as loop
    import onedet.train.saving as saving

    writes: list[str] = []
    real_write = saving.write_checkpoint

    def spy(folder, **kwargs):
        writes.append(str(folder))
        return real_write(folder, **kwargs)

    saving.write_checkpoint = spy
    trainer = loop.Trainer(tiny_config(store, out, epochs=2, batch_size=4, workers=1))
    read: list[int] = []
    real_read = trainer.train_store.read_batch

    def recording_read(indices, *args, **kwargs):
        read.extend(int(i) for i in indices)
        return real_read(indices, *args, **kwargs)

    trainer.train_store.read_batch = recording_read
    try:
        shard = trainer.loader.shard_indices(0).tolist()
        steps = len(trainer.loader)
        trainer.fit()
        state = {k: v.detach().clone() for k, v in trainer.detector.state_dict().items()}
        ema = dict(trainer.ema.shadow)
    finally:
        trainer.close()
    torch.save(
        {"shard": shard, "read": read, "steps": steps, "writes": writes, "state": state, "ema": ema},
        records / f"rank{rank}.pt",
    )


@pytest.mark.slow
def test_two_cpu_processes_stay_in_sync_and_only_rank0_writes(tmp_path: Path) -> None:
    store = make_store(tmp_path, num_images=24)
    out, records = tmp_path / "run", tmp_path / "records"
    records.mkdir()
    mp.spawn(_worker, args=(_free_port(), store, out, records), nprocs=WORLD, join=True)
    ranks = [torch.load(records / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]

    # Same weights (and EMA) on both ranks after training.
    for name, value in ranks[0]["state"].items():
        torch.testing.assert_close(ranks[1]["state"][name], value, rtol=0, atol=0, msg=name)
    for name, value in ranks[0]["ema"].items():
        torch.testing.assert_close(ranks[1]["ema"][name], value, rtol=0, atol=0, msg=name)
    # Both epochs ran, each of the shard's number of steps.
    assert read_train_state(out / "weights" / "last")["global_step"] == 2 * ranks[0]["steps"]

    # Disjoint shards (up to the wrap-around padding that evens them out) covering the store, read as sharded.
    num_train = len(Store(store / "train"))
    shards = [set(r["shard"]) for r in ranks]
    assert shards[0] | shards[1] == set(range(num_train))
    assert len(shards[0] & shards[1]) <= WORLD * len(ranks[0]["shard"]) - num_train
    for r in ranks:
        first_epoch = r["read"][: len(r["shard"])]
        assert sorted(first_epoch) == sorted(r["shard"]), "each rank reads its own shard"

    # Rank 0 alone writes checkpoints, metrics and plots.
    assert ranks[0]["writes"] and not ranks[1]["writes"]
    assert (out / "metrics.csv").is_file() and (out / "weights" / "best" / "model.safetensors").is_file()
