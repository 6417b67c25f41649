"""`onedet info` on a model: what an exported ONNX file or a run folder holds, read from its metadata without running
it (what to check before shipping a file, or when a folder of runs has lost its labels).

`describe_onnx` needs onnxruntime alone (it runs in the serving image); `describe_run` reads a checkpoint's
`model.json`, the safetensors header (parameter counts without loading a weight) and, for a run folder, its
`train_config.json` and `metrics.json`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from onedet.errors import OnedetError


def is_model_path(path: Path | str) -> bool:
    """Whether `onedet info PATH` describes a model (an .onnx file, a run or checkpoint folder) rather than a store."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        return True  # decided without importing onedet.checkpoint (torch): the serving image has no torch
    from onedet.checkpoint import WEIGHTS

    return (path / "weights").is_dir() or (path / WEIGHTS).is_file()


def _classes(names: list[str], ids: list[int], thresholds: list[float | None] | None) -> list[dict[str, Any]]:
    own = thresholds or [None] * len(names)
    return [{"id": int(c), "name": n, "threshold": t} for c, n, t in zip(ids, names, own)]


def describe_onnx(path: Path | str) -> dict[str, Any]:
    """An exported file: its precision, onedet version, input and output shapes, model input size and classes (with
    each one's own score threshold, or None)."""
    from onedet.runtime import VERSION_KEY, OnnxDetector

    detector = OnnxDetector(path)
    session = detector.session
    return {
        "kind": "onnx",
        "file": str(detector.path),
        "megabytes": detector.path.stat().st_size / 2**20,
        "precision": detector.precision,
        "onedet_version": detector.metadata.get(VERSION_KEY),
        "image_size": detector.image_size,
        "input": {i.name: [str(d) for d in i.shape] for i in session.get_inputs()},
        "outputs": {o.name: [str(d) for d in o.shape] for o in session.get_outputs()},
        "classes": _classes(detector.classes, detector.category_ids, detector.score_thresholds),
    }


def _parameters(weights: Path) -> int:
    """Parameters in a safetensors file, from its header alone."""
    import math

    from safetensors import safe_open

    with safe_open(str(weights), framework="numpy") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118 (not a dict)


def describe_run(path: Path | str) -> dict[str, Any]:
    """A run or checkpoint folder: the checkpoint described (best, else last), its model, parameter count, classes
    and thresholds, and for a run folder how it was trained and its val metrics (None where a file is missing)."""
    from onedet.checkpoint import MODEL_JSON, WEIGHTS, checkpoint_dir, parse_model_config, read_info
    from onedet.runtime import SCORE_THRESHOLDS_KEY, parse_score_thresholds

    path = Path(path)
    folder = checkpoint_dir(path)
    info = read_info(folder)
    config = parse_model_config(info, folder)
    run = path if (path / "weights").is_dir() else None

    def read(name: str) -> dict[str, Any] | None:
        file = None if run is None else run / name
        if file is None or not file.is_file():
            return None
        try:
            return json.loads(file.read_text())
        except json.JSONDecodeError as err:
            raise OnedetError(f"{file}: not valid JSON ({err})") from err

    train_config, metrics = read("train_config.json"), read("metrics.json")
    # checked as load_run checks them: a bad entry is a clear error here too, not a table of whatever it holds
    own = info.get(SCORE_THRESHOLDS_KEY)
    own = None if own is None else parse_score_thresholds(own, len(info["classes"]), folder / MODEL_JSON)
    trained = ("preset", "data", "epochs", "finetune", "mosaic", "mixup", "seed")
    summary = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    return {
        "kind": "run",
        "checkpoint": str(folder),
        "model": {
            "backbone": config.backbone,
            "depth": config.depth,
            "embed_dim": config.embed_dim,
            "image_size": config.image_size,
            "window_size": config.window_size,
            "global_blocks": list(config.global_blocks),
            "strides": list(config.strides),
            "parameters": _parameters(folder / WEIGHTS),
        },
        "classes": _classes(info["classes"], info["category_ids"], own),
        "epochs_done": info.get("epochs_done"),
        "onedet_version": info.get("onedet_version"),
        "distill": info.get("distill"),
        "trained": None if train_config is None else {k: train_config.get(k) for k in trained},
        "metrics": None if metrics is None else {k: metrics.get(k) for k in summary},
    }


def describe(path: Path | str) -> dict[str, Any]:
    """`describe_onnx` for an .onnx file, else `describe_run`."""
    return describe_onnx(path) if Path(path).suffix.lower() == ".onnx" else describe_run(path)


def format_description(d: dict[str, Any]) -> str:
    """`describe`'s dict as a few readable lines."""
    from onedet.runtime import DEFAULT_THRESHOLD

    def classes() -> list[str]:
        rows = [f"classes ({len(d['classes'])}; id, name, own score threshold):"]
        width = max((len(c["name"]) for c in d["classes"]), default=0)
        for c in d["classes"]:
            own = f"- ({DEFAULT_THRESHOLD:g} is used)" if c["threshold"] is None else f"{c['threshold']:.3g}"
            rows.append(f"  {c['id']:>4}  {c['name']:<{width}}  {own}")
        return rows

    if d["kind"] == "onnx":
        shape = ", ".join(next(iter(d["input"].values())))
        return "\n".join(
            [
                f"{d['file']}: onedet {d['onedet_version']} ONNX model, {d['precision']}, {d['megabytes']:.1f} MB",
                f"input: uint8 RGB [{shape}] of any size, letterboxed to {d['image_size']} px inside the graph",
                "outputs: "
                + ", ".join(f"{k} [{', '.join(v)}]" for k, v in d["outputs"].items())
                + " (boxes in the input image's pixels)",
                *classes(),
            ]
        )
    m = d["model"]
    lines = [
        f"{d['checkpoint']}: onedet {d['onedet_version']} checkpoint, {m['parameters'] / 1e6:.1f} M parameters",
        f"model: {m['backbone']} layout, {m['depth']} blocks of width {m['embed_dim']} (global: "
        f"{m['global_blocks'] or 'none'}), {m['image_size']} px input, windows of {m['window_size']} patches, "
        f"strides {m['strides']}",
    ]
    t = d["trained"]
    if t is not None:
        lines.append(f"trained: {t['preset']} ({t['finetune']}) for {t['epochs']} epochs on {t['data']}")
    if d["epochs_done"] is not None:
        lines.append(f"this checkpoint: after {d['epochs_done']:g} epochs")
    if d["distill"]:
        lines.append(f"distilled from {d['distill'].get('teacher')} (student {d['distill'].get('student')})")
    if d["metrics"] is not None:
        ap, ap50 = d["metrics"]["AP"], d["metrics"]["AP50"]
        lines.append(f"val split: AP {ap:.3f}, AP50 {ap50:.3f} (metrics.json, the best checkpoint)")
    return "\n".join([*lines, *classes()])
