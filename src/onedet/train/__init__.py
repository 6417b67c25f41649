"""Fine-tuning: the training loop, optimizer and schedule, EMA, checkpoints, DDP, logs and plots.

`train(TrainConfig(data=STORE, out=RUN, ...))` is what `onedet train` runs.
"""

from __future__ import annotations

from typing import Any

from onedet.train.config import TrainConfig, TrainResult

__all__ = ["TrainConfig", "TrainResult", "train"]


def train(cfg: TrainConfig | None = None, **kwargs: Any) -> TrainResult:
    """Train a detector: `train(TrainConfig(...))` or `train(data=..., out=..., preset=..., ...)`; returns the run
    folder and the best checkpoint's validation metrics."""
    from onedet.train.loop import Trainer

    if cfg is None:
        cfg = TrainConfig(**kwargs)
    elif kwargs:
        raise TypeError("pass a TrainConfig or keyword arguments, not both")
    trainer = Trainer(cfg)
    try:
        return trainer.fit()
    finally:
        trainer.close()
