"""Training configuration: one typed dataclass, from which the `onedet train` arguments are generated.

Torch-free, so building the command line stays instant.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal


@dataclass
class TrainConfig:
    data: Path
    """The prepared store (folder with `train` and `val` splits)."""
    out: Path = Path("runs/onedet")
    """Run folder: checkpoints, metrics, plots."""
    preset: str = "base"
    """Model preset: base, small or tiny."""
    epochs: int = 50
    """Number of epochs."""
    batch_size: int = 8
    """Images per step (per process under torchrun)."""
    finetune: Literal["frozen", "lora", "full"] = "frozen"
    """What trains: frozen backbone (default), LoRA adapters on the backbone, or everything."""
    resume: bool = False
    """Continue the run in `out` where it stopped."""


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare one `--flag` per TrainConfig field, with the field's docstring as help."""
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if f.type in ("bool", bool):
            parser.add_argument(flag, action="store_true")
        else:
            parser.add_argument(flag, required=required, default=None if required else f.default)


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    kwargs = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**kwargs)
