"""Distillation data-parallel on the CPU (gloo, 2 processes, unlabelled batches included): both ranks end with the
same student and projectors, i.e. the projectors' gradients are averaged with the student's."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from run_helpers import make_run
from train_helpers import make_store

from onedet.data.store import Store

WORLD = 2


def _worker(rank: int, port: int, store: Path, teacher: Path, out: Path) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD)
    )
    torch.set_num_threads(1)
    from onedet.train.distill import DistillConfig, DistillTrainer

    cfg = DistillConfig(
        data=store,
        out=out / "run",
        teacher=teacher,
        student="teacher:depth=2",
        epochs=1,
        batch_size=4,
        workers=1,
        progress=False,
        unlabeled=store / "val",  # its boxes are ignored: any store split serves as unlabelled images
        unlabeled_batch_size=2,
    )
    trainer = DistillTrainer(cfg)
    try:
        trainer.fit()
        state = {k: v.detach().clone() for k, v in trainer.detector.state_dict().items()}
        state.update(
            {f"projectors.{k}": v.detach().clone() for k, v in trainer.forward.projectors.state_dict().items()}
        )
    finally:
        trainer.close()
    torch.save(state, out / f"rank{rank}.pt")


@pytest.mark.slow
def test_ranks_end_with_the_same_student_and_projectors(tmp_path: Path) -> None:
    store = make_store(tmp_path, num_images=12)
    train = Store(store / "train")
    teacher = make_run(tmp_path / "teacher", list(train.classes), list(train.category_ids))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(port, store, teacher, tmp_path), nprocs=WORLD)
    first, second = (torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD))
    assert any(k.startswith("projectors.") for k in first)
    for name, value in first.items():
        assert torch.equal(value, second[name]), name
