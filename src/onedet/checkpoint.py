"""Checkpoints: the folder format, reading one back without unpickling anything, and `load_run`.

Evaluation, export, predict and the API load runs through this module, so none of them imports the training
package (`onedet.train.saving` writes checkpoints).

A checkpoint folder (`RUN/weights/last`, `RUN/weights/best`) holds:

- `model.safetensors`: the weights to use (EMA, LoRA merged) under the plain `Detector` names;
- `model.json`: `{"model": ModelConfig.to_dict(), "classes", "category_ids", "onedet_version", ...}`; in a finished
  run's `best/`, also `score_thresholds` (each class's best-F1 score on the val split: `onedet.runtime`; written by
  `update_model_json`; for any checkpoint by `onedet eval --record`);
- in `last/` only, `train_state.pt`: everything resuming needs (the live, un-averaged weights that differ
  from `model.safetensors`, optimizer, scheduler, EMA, loader and RNG states). It holds only tensors, dicts,
  lists and numbers, so it loads with `torch.load(weights_only=True)`: nothing arbitrary is unpickled;
- with LoRA, `adapter/`: peft's own `adapter_config.json` + `adapter_model.safetensors`.

`best` is `last` without its training state, as hard links to last's files (`onedet.train.saving.link_checkpoint`):
the weights are written once per epoch, not twice (BENCHMARKS.md, Training, says what a base checkpoint costs).

A checkpoint is swapped in whole by `onedet.atomic.replace_folder`; a crash between its two renames leaves
`.NAME.old-PID`, which `checkpoint_dir` recovers.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors.torch import load_file

from onedet.atomic import write_json
from onedet.errors import OnedetError
from onedet.runtime import SCORE_THRESHOLDS_KEY, parse_score_thresholds

WEIGHTS = "model.safetensors"
MODEL_JSON = "model.json"
TRAIN_STATE = "train_state.pt"
ADAPTER = "adapter"


class LoadedRun(NamedTuple):
    model: Any  # onedet.model.detector.Detector, in eval mode
    config: Any  # onedet.config.ModelConfig
    classes: list[str]
    category_ids: list[int]
    score_thresholds: list[float | None] | None = None
    """Each class's own score threshold (`onedet.runtime.SCORE_THRESHOLDS_KEY`), when the checkpoint records them."""
    folder: Path | None = None
    """The checkpoint folder the weights were read from."""


def update_model_json(folder: Path | str, entries: dict[str, Any]) -> Path:
    """Add `entries` to the `model.json` of the written checkpoint `folder`, atomically. The file is replaced, not
    rewritten in place, so a `last/` whose files `best/` hard-links keeps its own."""
    path = Path(folder) / MODEL_JSON
    return write_json(path, {**json.loads(path.read_text()), **entries})


# --- reading -----------------------------------------------------------------------------------------------------


def checkpoint_dir(path: Path | str, which: str = "best") -> Path:
    """The checkpoint folder for a run folder (`which` = best or last; best falls back to last) or itself."""
    path = Path(path)
    if (path / WEIGHTS).is_file():
        return path
    if not path.exists():
        raise OnedetError(f"{path}: no such run or checkpoint folder")
    weights = path / "weights"
    if not weights.is_dir():
        raise OnedetError(f"{path}: not a onedet run (no weights/ folder) nor a checkpoint (no {WEIGHTS})")
    for name in dict.fromkeys([which, "last"]):
        folder = weights / name
        if not folder.exists():
            # A crash between the two renames of write_checkpoint leaves the previous one as .NAME.old-PID.
            for stale in sorted(weights.glob(f".{name}.old-*")):
                if (stale / WEIGHTS).is_file():
                    os.replace(stale, folder)
                    break
        if (folder / WEIGHTS).is_file():
            return folder
    raise OnedetError(f"{weights}: no complete checkpoint ({which!r} or 'last' with {WEIGHTS})")


def read_info(folder: Path) -> dict[str, Any]:
    """`model.json` of a checkpoint folder."""
    path = Path(folder) / MODEL_JSON
    try:
        info = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise OnedetError(f"{path}: cannot read the checkpoint description: {err}") from err
    for key in ("model", "classes", "category_ids"):
        if key not in info:
            raise OnedetError(f"{path}: missing {key!r}")
    return info


def parse_model_config(info: dict[str, Any], folder: Path) -> Any:
    """The ModelConfig of `read_info(folder)`'s `info`, with `pretrained=None` (the weights are the checkpoint's)."""
    from onedet.config import ModelConfig

    try:
        return ModelConfig.from_dict({**info["model"], "pretrained": None})
    except (OnedetError, TypeError, ValueError) as err:  # an edited key or value (TypeError: deep in the dataclass)
        raise OnedetError(f"{Path(folder) / MODEL_JSON}: 'model' is not a valid model config ({err})") from err


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    path = Path(folder) / WEIGHTS
    try:
        return load_file(path)
    except Exception as err:  # safetensors raises its own error types for a truncated or foreign file
        raise OnedetError(f"{path}: cannot read the weights: {err}") from err


def read_train_state(folder: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(folder) / TRAIN_STATE
    if not path.is_file():
        raise OnedetError(f"{path}: missing; this checkpoint cannot be resumed")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:  # torch's weights_only refusal, in a message of many lines
        raise OnedetError(
            f"{path}: cannot load the training state: damaged, or it holds objects other than tensors, numbers "
            "and containers (which onedet never unpickles)"
        ) from err
    except Exception as err:  # a corrupt file (a zip cut short, ...)
        raise OnedetError(f"{path}: cannot load the training state: {' '.join(str(err).split())}") from err


AUX_PREFIX = "head.aux_"
"""State-dict prefix of the training-only auxiliary branch (`DetectionHead.aux_*`)."""


def load_weights(
    model: torch.nn.Module,
    weights: dict[str, torch.Tensor],
    source: Path,
    optional: str | None = None,
    problem: str = "weights do not match the model",
) -> None:
    """Load `weights` into `model`, or raise an OnedetError naming `source` and what does not fit: tensors of
    another shape, weights the model lacks, or model weights missing from the file (except those whose names
    start with `optional`). A checkpoint of another architecture, e.g. from another onedet version."""
    expected = model.state_dict()
    reshaped = [k for k, v in weights.items() if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    if reshaped:
        k = reshaped[0]
        raise OnedetError(
            f"{source}: {problem}: {len(reshaped)} tensor(s) of another shape, e.g. {k} is "
            f"{list(weights[k].shape)} in the file and {list(expected[k].shape)} in the model "
            "(a checkpoint from an onedet version with another architecture?)"
        )
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not (optional and k.startswith(optional))]
    if missing or unexpected:
        raise OnedetError(f"{source}: {problem} (missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")


def load_run(path: Path | str, which: str = "best", device: str | torch.device = "cpu") -> LoadedRun:
    """A trained detector from a run folder (`which` checkpoint: best, falling back to last) or a checkpoint folder.

    The model is built from `model.json`'s config with `pretrained=None` (the weights come from
    `model.safetensors`, LoRA already merged) and returned in eval mode on `device`.
    """
    from onedet.model.detector import build_detector

    folder = checkpoint_dir(path, which)
    info = read_info(folder)
    config = parse_model_config(info, folder)
    model = build_detector(config)
    # The auxiliary one-to-many branch only trains (eval mode never runs it), so a checkpoint without it, or
    # without part of it (written before it had its own towers), is complete for prediction and export.
    problem = f"weights do not match the model in {MODEL_JSON}"
    load_weights(model, read_weights(folder), folder / WEIGHTS, optional=AUX_PREFIX, problem=problem)
    model.to(device).eval()
    classes = list(info["classes"])
    own = info.get(SCORE_THRESHOLDS_KEY)  # written after training's last evaluation; absent before it
    thresholds = None if own is None else parse_score_thresholds(own, len(classes), folder / MODEL_JSON)
    return LoadedRun(model, config, classes, [int(c) for c in info["category_ids"]], thresholds, folder)
