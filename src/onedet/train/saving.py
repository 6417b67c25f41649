"""Writing checkpoints (the format is `onedet.checkpoint`'s), and the RNG states `train_state.pt` carries.

Each checkpoint folder is written whole and swapped in by `onedet.atomic.replace_folder`, every file fsynced. A full
disk or an unwritable folder raises `OnedetError` and removes the partial folder; the previous checkpoint stays.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from onedet import __version__
from onedet.atomic import replace_folder
from onedet.checkpoint import ADAPTER, MODEL_JSON, TRAIN_STATE, WEIGHTS
from onedet.errors import OnedetError


def _contiguous_unshared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors that share storage (tied weights); clone the later ones.
    seen: set[tuple[int, int | torch.SymInt]] = set()
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
    """Fill a temporary folder, fsync it and swap it in for `folder`; a failure leaves the previous one intact."""
    try:
        return replace_folder(folder, fill, fsync=True)
    except OSError as err:
        raise OnedetError(
            f"cannot write checkpoint {folder}: {err.strerror or err} (the previous checkpoint, if any, is intact)"
        ) from err


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


# --- what a trainer saves ----------------------------------------------------------------------------------------


def check_writable(out: Path) -> None:
    """Create the run folder `out` and write a probe file into it, or raise an OnedetError saying why not."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        raise OnedetError(f"{out}: the run folder is not writable: {err.strerror or err}") from err


def export_weights(
    detector: torch.nn.Module, lora: bool
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """The detector's weights on the CPU under plain `Detector` names (with `lora`, merged), and its adapters alone."""
    from onedet.model.lora import adapter_state_dict, merged_state_dict

    if lora:
        weights = merged_state_dict(detector)
        adapter = {k: v.detach().clone() for k, v in adapter_state_dict(detector).items()}
    else:
        weights, adapter = detector.state_dict(), None
    return {k: v.detach().to("cpu", copy=True) for k, v in weights.items()}, adapter


def live_tensors(detector: torch.nn.Module, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The detector's tensors that `weights` (model.safetensors) does not already hold: neck/head before EMA, LoRA
    bases and adapters. With model.safetensors they restore the live weights exactly."""
    raw = detector.state_dict()
    return {k: v.detach().cpu() for k, v in raw.items() if k not in weights or not torch.equal(v.cpu(), weights[k])}


def save_run_checkpoints(
    folder: Path,
    *,
    weights: dict[str, torch.Tensor],
    info: dict[str, Any],
    train_state: dict[str, Any],
    adapter: tuple[Any, dict[str, torch.Tensor]] | None = None,
    best: bool = False,
) -> None:
    """Write `folder/last` (with `train_state` and, given `(lora_config, adapter_weights)`, peft's `adapter/`), and
    `folder/best` as links to the same files, less the training state, when `best`."""
    extra = None
    if adapter is not None:
        from onedet.model.lora import save_adapter

        def extra(tmp: Path) -> None:
            save_adapter(adapter[0], adapter[1], tmp / ADAPTER)

    write_checkpoint(folder / "last", weights=weights, info=info, train_state=train_state, write_extra=extra)
    if best:
        link_checkpoint(folder / "last", folder / "best")
