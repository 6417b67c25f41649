"""Shared helpers of the training tests: a tiny synthetic store and a fast tiny-preset TrainConfig."""

from __future__ import annotations

from pathlib import Path
from typing import Any

IMAGE_SIZE = 128


def make_store(root: Path, num_images: int = 24, seed: int = 0) -> Path:
    """A prepared synthetic store (`train` and `val` splits) of `num_images` 128-pixel images under `root`."""
    from onedet.data.prepare import prepare
    from onedet.data.synthetic import make_synthetic

    store = root / "store"
    if not (store / "train" / "meta.json").is_file():
        make_synthetic(root / "source", num_images=num_images, image_size=IMAGE_SIZE, seed=seed)
        prepare(root / "source", store, image_size=IMAGE_SIZE, progress=False, workers=1)
    return store


def tiny_config(store: Path, out: Path, **overrides: Any) -> Any:
    """A TrainConfig of the tiny preset at 128 px that trains in seconds on a CPU."""
    from onedet.train.config import TrainConfig

    options: dict[str, Any] = {
        "data": store,
        "out": out,
        "preset": "tiny",
        "pretrained": None,
        "epochs": 1,
        "batch_size": 8,
        "progress": False,
        "workers": 2,
    }
    options.update(overrides)
    return TrainConfig(**options)


def cli_args(store: Path, out: Path, *extra: str) -> list[str]:
    """`onedet train` arguments equivalent to `tiny_config`."""
    return [
        "train",
        "--data",
        str(store),
        "--out",
        str(out),
        "--preset",
        "tiny",
        "--pretrained",
        "none",
        "--batch-size",
        "8",
        "--no-progress",
        "--workers",
        "2",
        *extra,
    ]
