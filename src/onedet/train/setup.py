"""What a run trains, built from its TrainConfig: the run folder checked for resuming, the store's splits, the
detector for the fine-tuning mode (frozen, LoRA, full; from `last` when resuming), its ModelConfig, and the
training loader (augmented batches, or the feature cache's)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from onedet.checkpoint import WEIGHTS, checkpoint_dir, load_weights, parse_model_config, read_info, read_weights
from onedet.config import ModelConfig
from onedet.errors import OnedetError
from onedet.train.config import TRAIN_CONFIG, TrainConfig, model_config, resume_config

if TYPE_CHECKING:
    from onedet.model.detector import Detector


def resolve_run(cfg: TrainConfig) -> tuple[TrainConfig, Path | None]:
    """(the config to train with, the `last` checkpoint to resume from or None). With `cfg.resume` the saved run's
    config is merged in (`resume_config`); without it, a run folder that already holds a run is an error."""
    out = Path(cfg.out)
    if not cfg.resume:
        if (out / "weights" / "last" / WEIGHTS).exists() or any(out.glob("weights/.last.old-*")):
            raise OnedetError(f"{out}: already holds a run; pass --resume to continue it, or choose another --out")
        return cfg, None
    last = checkpoint_dir(out, "last") if (out / "weights").is_dir() else None
    if last is None:
        raise OnedetError(f"{out}: nothing to resume (no weights/last checkpoint)")
    try:
        return resume_config(cfg, json.loads((out / TRAIN_CONFIG).read_text())), last
    except (OSError, ValueError, TypeError, KeyError) as err:  # missing, cut short or edited
        raise OnedetError(f"{out / TRAIN_CONFIG}: cannot resume with this training config ({err})") from err


def open_splits(data: Path) -> tuple[Any, Any]:
    """The store's `train` split and its `val` split (None when absent), which must have the same classes."""
    from onedet.data.store import Store

    if (data / "meta.json").is_file():  # STORE/train itself: Store() would say "STORE/train/train: no such store"
        raise OnedetError(
            f"{data}: is a store split; pass the store folder {data.parent} (which holds train/ and val/)"
        )
    train = Store(data / "train")
    val = Store(data / "val") if (data / "val" / "meta.json").is_file() else None
    if val is not None and list(val.classes) != list(train.classes):
        raise OnedetError(f"{data / 'val'}: classes {val.classes} differ from the train split's {list(train.classes)}")
    return train, val


def run_model_config(cfg: TrainConfig, train_store: Any, resume_from: Path | None) -> ModelConfig:
    """A new run's ModelConfig (`model_config`), or the resumed checkpoint's, whose classes must be the store's."""
    classes = list(train_store.classes)
    if resume_from is None:
        return model_config(cfg, train_store.image_size, len(classes))
    info = read_info(resume_from)
    if list(info["classes"]) != classes:
        raise OnedetError(
            f"{Path(cfg.data) / 'train'}: the store's classes {classes} do not match the checkpoint's "
            f"{info['classes']} ({resume_from}); resume with the store the run was trained on"
        )
    return parse_model_config(info, resume_from)


def build_run_detector(
    config: ModelConfig, finetune: str, lora_rank: int, resume_from: Path | None
) -> tuple[Detector, Any]:
    """(the detector to train, its LoRA config or None): pretrained backbone weights for a new run, `last`'s
    weights when resuming; the backbone frozen unless `finetune` is `full`, LoRA adapters added for `lora`."""
    from onedet.model.detector import Detector, build_detector

    if resume_from is not None:
        detector = Detector(config)
        problem = "cannot resume, the weights do not fit the model"
        load_weights(detector, read_weights(resume_from), resume_from / WEIGHTS, problem=problem)
    else:
        detector = build_detector(config)
    return detector, prepare_for_finetune(detector, finetune, lora_rank)


def prepare_for_finetune(detector: Detector, finetune: str, lora_rank: int) -> Any:
    """Freeze the backbone unless `finetune` is `full`; add LoRA adapters for `lora`; returns their config or None."""
    detector.set_backbone_frozen(finetune != "full")
    if finetune != "lora":
        return None
    from onedet.model.lora import apply_lora

    return apply_lora(detector, rank=lora_rank)


def build_loaders(
    cfg: TrainConfig,
    train_store: Any,
    val_store: Any,
    detector: Detector,
    dtype: torch.dtype | None,
    device: torch.device,
    dist: Any,
    is_main: bool,
) -> tuple[Any, Any]:
    """(the training loader, the val feature cache or None). Each rank of `dist` (`distributed.init`'s) reads its
    shard; with `cfg.cache_features` the loader yields cached features (computed in `dtype`) instead of images."""
    from onedet.data.augment import BatchAugment
    from onedet.data.loader import BatchLoader
    from onedet.train.features import cached_loaders

    shard = dict(device=device, rank=dist.rank, world_size=dist.world_size)
    if not cfg.cache_features:
        augment = BatchAugment() if cfg.augment else None
        loader = BatchLoader(
            train_store,
            cfg.batch_size,
            seed=cfg.seed,
            augment=augment,
            mixup=cfg.mixup,
            mosaic=cfg.mosaic,  # the trainer sets mosaic_epochs every epoch, from the schedule as it stands
            **shard,
        )
        return loader, None
    return cached_loaders(
        detector,
        BatchLoader(train_store, cfg.batch_size, seed=cfg.seed, **shard),
        val_store,
        Path(cfg.out) / "cache",
        batch_size=cfg.eval_batch_size or cfg.batch_size,
        dtype=dtype,
        flip=0.5 if cfg.augment else 0,
        progress=cfg.progress and is_main,
        **shard,
    )
