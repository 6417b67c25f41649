"""Fine-tuning: the training loop, optimizer and schedule, EMA, checkpoints, DDP, logs and plots.

`train(TrainConfig(data=STORE, out=RUN, ...))` is what `onedet train` runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from onedet.train.config import TrainConfig

if TYPE_CHECKING:
    from onedet.train.loop import TrainResult

__all__ = ["TrainConfig", "train"]


def train(cfg: TrainConfig | None = None, **kwargs: Any) -> TrainResult:
    """Train a detector: `train(TrainConfig(...))` or `train(data=..., out=..., preset=..., ...)`."""
    from onedet.train.loop import train as run

    if cfg is None:
        cfg = TrainConfig(**kwargs)
    elif kwargs:
        raise TypeError("pass a TrainConfig or keyword arguments, not both")
    return run(cfg)
