"""Checkpoints: writing them atomically, reading them back without unpickling anything, and `load_run`.

A checkpoint folder (`RUN/weights/last`, `RUN/weights/best`) holds:

- `model.safetensors`: the weights to use (EMA, LoRA merged) under the plain `Detector` names;
- `model.json`: `{"model": ModelConfig.to_dict(), "classes", "category_ids", "onedet_version", ...}`;
- in `last/` only, `train_state.pt`: everything resuming needs (the live, un-averaged weights that differ
  from `model.safetensors`, optimizer, scheduler, EMA, loader and RNG states). It holds only tensors, dicts,
  lists and numbers, so it loads with `torch.load(weights_only=True)`: nothing arbitrary is unpickled;
- with LoRA, `adapter/`: peft's own `adapter_config.json` + `adapter_model.safetensors`.

`best` is `last` without its training state, as hard links to last's files (`link_checkpoint`): the weights are
written once per epoch, not twice (at 640 px a base checkpoint's 350 MB took about 1.4 s to write here).

Atomicity: a checkpoint is written into `weights/.NAME.tmp-PID`, every file fsynced, then swapped in with two
renames (the old folder to `.NAME.old-PID`, the new one to `NAME`) and the old one removed. A crash between the
two renames leaves `.NAME.old-PID`, which `checkpoint_dir` recovers; a crash before them leaves the previous
checkpoint untouched. A full disk or an unwritable folder raises `OnedetError` and removes the partial folder.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from onedet import __version__
from onedet.errors import OnedetError

WEIGHTS = "model.safetensors"
MODEL_JSON = "model.json"
TRAIN_STATE = "train_state.pt"
ADAPTER = "adapter"


class LoadedRun(NamedTuple):
    model: Any  # onedet.model.detector.Detector, in eval mode
    config: Any  # onedet.config.ModelConfig
    classes: list[str]
    category_ids: list[int]


# --- writing ---------------------------------------------------------------------------------------------------


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _contiguous_unshared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors that share storage (tied weights); clone the later ones.
    seen: set[tuple[int, int]] = set()
    out = {}
    for name, value in state.items():
        value = value.detach().cpu().contiguous()
        key = (value.untyped_storage().data_ptr(), value.storage_offset())
        if value.numel() and key in seen:
            value = value.clone()
        seen.add(key)
        out[name] = value
    return out


def write_checkpoint(
    folder: Path,
    *,
    weights: dict[str, torch.Tensor],
    info: dict[str, Any],
    train_state: dict[str, Any] | None = None,
    write_extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write one checkpoint folder atomically (see the module docstring); returns `folder`.

    `info` is `model.json`'s content (onedet_version is added); `write_extra(tmp_folder)` may add files
    (e.g. the LoRA adapter).
    """

    def fill(tmp: Path) -> None:
        save_file(_contiguous_unshared(weights), tmp / WEIGHTS, metadata={"format": "pt"})
        (tmp / MODEL_JSON).write_text(json.dumps({**info, "onedet_version": __version__}, indent=2) + "\n")
        if train_state is not None:
            torch.save(train_state, tmp / TRAIN_STATE)
        if write_extra is not None:
            write_extra(tmp)

    return _replace_folder(Path(folder), fill)


def link_checkpoint(source: Path, folder: Path) -> Path:
    """`folder` as a copy of the checkpoint `source` without its training state, atomically like
    `write_checkpoint`. Files are hard links where the file system allows (a checkpoint's files are never
    changed in place: every write makes a new folder), so `best` costs no second write of the weights."""

    def fill(tmp: Path) -> None:
        for path in sorted(Path(source).rglob("*")):
            target = tmp / path.relative_to(source)
            if path.is_dir():
                target.mkdir(parents=True, exist_ok=True)
            elif path.name != TRAIN_STATE:
                try:
                    os.link(path, target)
                except OSError:
                    shutil.copy2(path, target)

    return _replace_folder(Path(folder), fill)


def _replace_folder(folder: Path, fill: Callable[[Path], None]) -> Path:
    """Fill `weights/.NAME.tmp-PID`, fsync it, and swap it in for `folder` (see the module docstring)."""
    parent = folder.parent
    tmp = parent / f".{folder.name}.tmp-{os.getpid()}"
    old = parent / f".{folder.name}.old-{os.getpid()}"
    try:
        parent.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        fill(tmp)
        for path in tmp.rglob("*"):
            if path.is_file():
                _fsync(path)
        _fsync(tmp)
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        _fsync(parent)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not folder.exists():
            os.replace(old, folder)  # put the previous checkpoint back
        raise OnedetError(
            f"cannot write checkpoint {folder}: {err.strerror or err} (the previous checkpoint, if any, is intact)"
        ) from err
    shutil.rmtree(old, ignore_errors=True)
    return folder


# --- RNG state as tensors (so that train_state.pt stays weights_only-loadable) -----------------------------------


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU and CUDA) RNG states, as tensors and ints."""
    version, py_state, gauss = random.getstate()
    _, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": torch.tensor(py_state, dtype=torch.int64),
        "python_version": int(version),
        "python_gauss": gauss if gauss is None else float(gauss),
        "numpy_keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
        "numpy_pos": int(np_pos),
        "numpy_has_gauss": int(np_has_gauss),
        "numpy_gauss": float(np_gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate((state["python_version"], tuple(int(v) for v in state["python"].tolist()), state["python_gauss"]))
    np.random.set_state(
        (
            "MT19937",
            state["numpy_keys"].numpy().astype(np.uint32),
            state["numpy_pos"],
            state["numpy_has_gauss"],
            state["numpy_gauss"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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
    from onedet.config import ModelConfig
    from onedet.model.detector import build_detector

    folder = checkpoint_dir(path, which)
    info = read_info(folder)
    try:
        config = ModelConfig.from_dict({**info["model"], "pretrained": None})
    except (OnedetError, TypeError, ValueError) as err:  # an edited key or value (TypeError: deep in the dataclass)
        raise OnedetError(f"{folder / MODEL_JSON}: 'model' is not a valid model config ({err})") from err
    model = build_detector(config)
    # The auxiliary one-to-many branch only trains (eval mode never runs it), so a checkpoint without it, or
    # without part of it (written before it had its own towers), is complete for prediction and export.
    problem = f"weights do not match the model in {MODEL_JSON}"
    load_weights(model, read_weights(folder), folder / WEIGHTS, optional=AUX_PREFIX, problem=problem)
    model.to(device).eval()
    return LoadedRun(model, config, list(info["classes"]), [int(c) for c in info["category_ids"]])
