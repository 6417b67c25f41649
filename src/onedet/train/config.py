"""Training configuration: one typed dataclass, from which `onedet train`'s arguments are generated
(`onedet.options.add_arguments`: each field's docstring is its `--help` text, its type the argument's parser, and
`--model.FIELD=VALUE` sets a `ModelConfig` field). Torch-free, so building the command line stays instant.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

from onedet.config import ModelConfig
from onedet.errors import OnedetError


@dataclass
class TrainConfig:
    data: Path
    """The prepared store (folder with `train` and `val` splits)."""
    out: Path = Path("runs/onedet")
    """Run folder: checkpoints, metrics, plots."""
    preset: str = "base"
    """Model preset: base, small or tiny."""
    pretrained: str | None = "preset"
    """Backbone weights: `preset` (the preset's default), `hub`, a local file, or `none` (random)."""
    epochs: int = 50
    """Number of epochs."""
    batch_size: int = 8
    """Images per step (per process under torchrun)."""
    finetune: Literal["frozen", "lora", "full"] = "frozen"
    """What trains: frozen backbone (default), LoRA adapters on the backbone, or everything."""
    lora_rank: int = 8
    """LoRA rank (with `--finetune lora`)."""
    lr: float = 1e-3
    """Peak learning rate of AdamW (neck and head)."""
    backbone_lr_scale: float = 0.1
    """Backbone (or LoRA adapter) learning rate as a fraction of `lr`, with `--finetune full|lora`."""
    weight_decay: float = 0.05
    """AdamW weight decay (never applied to norms, biases and position embeddings)."""
    warmup_epochs: float = 1.0
    """Linear learning-rate warm-up, in epochs (fractions allowed); cosine decay to 1% afterwards."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value (0 disables)."""
    ema_decay: float = 0.999
    """Decay of the exponential moving average of the weights (evaluated and saved); 0 disables."""
    amp: Literal["auto", "bf16", "off"] = "auto"
    """Mixed precision: `auto` is bf16 on CUDA, and on CPUs with native bf16 when the backbone is frozen (else fp32)."""
    cache_features: bool = False
    """With a frozen backbone, compute its features once per image (and flipped image) and train the neck and
    head on them: much faster epochs on a CPU, but of the augmentations only the horizontal flip remains (no
    scale jitter, crops or colour jitter)."""
    augment: bool = True
    """Batch augmentation (flip, scale jitter, colour) on the device."""
    mixup: float = 0.0
    """Probability that an augmented training image is blended half and half with another image of its batch and
    takes that image's boxes as well (YOLOX's detection mixup; needs `augment`, not with `cache_features`)."""
    mosaic: float = 0.0
    """Probability that an augmented training image is a mosaic: its augmentation window taken out of a 2 x 2 tiling
    of it and three other images of its batch, objects at their usual scale (YOLOv4's and Ultralytics' mosaic;
    needs `augment`, not with `cache_features`)."""
    close_mosaic: int = 10
    """With `mosaic`, train the last this many epochs of the schedule (`epochs`, or fewer where `max_minutes` fits
    fewer) without it, on images like the ones predicted on (Ultralytics' `close_mosaic`)."""
    resume: bool = False
    """Continue the run in `out` where it stopped."""
    seed: int = 0
    """Seed of the weights' initialisation, shuffling and augmentation."""
    device: str = "auto"
    """`auto` (CUDA when present, else CPU), `cpu`, `cuda` or `cuda:N`."""
    workers: int | None = None
    """CPU threads for torch (default: torch's own choice)."""
    eval_every: int = 1
    """Evaluate on the `val` split every N epochs (and after the last)."""
    eval_batch_size: int | None = None
    """Batch size for evaluation (default: `batch_size`)."""
    checkpoint_every_steps: int = 0
    """Also write the `last` checkpoint every N optimizer steps (0: at the end of each epoch only)."""
    max_minutes: float | None = None
    """Wall-clock budget: after each epoch the schedule (cosine included) is refitted to end within it at the pace
    so far (at most `epochs`), going on from the learning rate it has reached, and training stops after the epoch
    during which it runs out."""
    patience: int | None = None
    """Early stopping: stop when val AP has not improved for this many epochs (judged after each evaluation); the
    `best` checkpoint is the run's result either way. Default: train the whole schedule (val AP often climbs again
    as the cosine schedule anneals: BENCHMARKS.md, Early stopping)."""
    progress: bool = True
    """Show a progress bar."""
    image_size: int | None = None
    """Model input size (default: the store's image size)."""
    model: dict[str, Any] = dataclasses.field(default_factory=dict, metadata={"fields_of": ModelConfig})
    """Model overrides on top of the preset, e.g. `{"neck_channels": 256}`; on the command line
    `--model.neck_channels=256` (one flag per `ModelConfig` field)."""

    def __post_init__(self) -> None:
        # An out-of-range number fails here, naming its option, not as a ValueError deep in the loader or AdamW.
        eval_batch = self.eval_batch_size
        for name, ok, rule in (
            ("epochs", self.epochs >= 1, "at least 1"),
            ("batch_size", self.batch_size >= 1, "at least 1"),
            ("eval_batch_size", eval_batch is None or eval_batch >= 1, "at least 1"),
            ("eval_every", self.eval_every >= 1, "at least 1"),
            ("lora_rank", self.lora_rank >= 1, "at least 1"),
            ("lr", self.lr > 0, "positive"),
            ("ema_decay", 0 <= self.ema_decay < 1, "in [0, 1)"),
            ("warmup_epochs", self.warmup_epochs >= 0, "0 or more"),
            ("checkpoint_every_steps", self.checkpoint_every_steps >= 0, "0 or more"),
            ("mixup", 0 <= self.mixup <= 1, "a probability, in [0, 1]"),
            ("mosaic", 0 <= self.mosaic <= 1, "a probability, in [0, 1]"),
            ("close_mosaic", self.close_mosaic >= 0, "0 or more"),
            ("patience", self.patience is None or self.patience >= 1, "at least 1 (or none)"),
        ):
            if not ok:
                raise OnedetError(f"--{name.replace('_', '-')} must be {rule}, got {getattr(self, name)}")
        why = "--cache-features trains on cached features" if self.augment else "--no-augment"
        if self.mixup and (self.cache_features or not self.augment):
            raise OnedetError(f"--mixup blends augmented images: it does not apply with {why}")
        if self.mosaic and (self.cache_features or not self.augment):
            raise OnedetError(f"--mosaic tiles augmented images: it does not apply with {why}")
        if self.mosaic and self.close_mosaic >= self.epochs:
            raise OnedetError(
                f"--mosaic with --close-mosaic {self.close_mosaic} and --epochs {self.epochs}: every epoch would be "
                "trained without it; lower --close-mosaic or train longer"
            )


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """JSON-ready dict of a TrainConfig (paths as strings)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(cfg).items()}


class TrainResult(NamedTuple):
    run: Path
    """The run folder."""
    metrics: dict[str, Any] | None
    """COCO metrics of the `best` checkpoint on `val` (None without a `val` split)."""


TRAIN_CONFIG = "train_config.json"
"""The run folder's copy of its TrainConfig."""
RESUME_OVERRIDES = ("data", "out", "resume", "device", "workers", "progress", "max_minutes", "patience")
"""Settings that may differ when resuming (where and how it runs, when it stops); everything else comes from the
saved run."""


def resume_config(cfg: TrainConfig, saved: dict[str, Any]) -> TrainConfig:
    """The config a resumed run continues with: the saved run's (`train_config.json`), less `RESUME_OVERRIDES`,
    which come from `cfg`. Fields a subclass of TrainConfig adds are kept the same way."""
    merged = {**saved, **{k: getattr(cfg, k) for k in RESUME_OVERRIDES}}
    merged["data"], merged["out"] = Path(merged["data"]), Path(merged["out"])
    return type(cfg)(**merged)


def model_config(cfg: TrainConfig, image_size: int, num_classes: int) -> ModelConfig:
    """The ModelConfig a new run trains: `cfg.preset` with `cfg.model`'s overrides, the backbone weights and
    freezing `cfg` asks for, and the input size (`cfg.image_size`, else the store's `image_size`) rounded up to
    the model's input multiple (the detector pads inputs to it)."""
    overrides = dict(cfg.model)
    if cfg.pretrained != "preset":
        overrides["pretrained"] = cfg.pretrained
    overrides["freeze_backbone"] = cfg.finetune != "full"
    # the input multiple from the preset and the overrides, not from a probe config: the preset's own image size
    # need not be a multiple of an overridden window (`tiny`, 256 px, with window_size=10 -> multiples of 160)
    preset = ModelConfig.from_preset(cfg.preset)
    patch, window = overrides.get("patch_size", preset.patch_size), overrides.get("window_size", preset.window_size)
    multiple = int(patch) * int(window)
    size = cfg.image_size or overrides.get("image_size") or image_size
    overrides["image_size"] = math.ceil(size / multiple) * multiple
    overrides["num_classes"] = num_classes
    return ModelConfig.from_preset(cfg.preset, **overrides)
