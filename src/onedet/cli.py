"""The `onedet` command line: a thin layer over the Python API.

Each sub-command has an `_add_<name>` function that declares its arguments and a `_run_<name>` handler that
imports the API lazily (so `onedet --help` is instant and `onedet predict` on an ONNX file never imports
torch) and calls the same function a Python user would.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from onedet import __version__
from onedet.errors import OnedetError


def _print_json(obj: object) -> None:
    json.dump(obj, sys.stdout, indent=2)
    sys.stdout.write("\n")


# --- prepare / info ------------------------------------------------------------------------------------------


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="read a COCO / YOLO / VOC dataset into a memory-mapped store")
    p.add_argument("source", type=Path, help="dataset folder (or a COCO JSON file)")
    p.add_argument("--out", type=Path, required=True, help="store folder; one sub-folder per split")
    p.add_argument("--format", default="auto", choices=["auto", "coco", "yolo", "voc"])
    p.add_argument("--image-size", type=int, default=640, help="square letterbox size in pixels")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images (counted and listed)")
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: all cores)")
    p.add_argument("--layout", default="raw", choices=["raw", "compact"], help="compact stores JPEG bytes")
    p.set_defaults(func=_run_prepare)


def _run_prepare(args: argparse.Namespace) -> int:
    from onedet.data.prepare import prepare
    from onedet.data.store import format_summary, summarize

    splits = prepare(
        args.source,
        args.out,
        format=args.format,
        image_size=args.image_size,
        skip_bad=args.skip_bad,
        workers=args.workers,
        layout=args.layout,
    )
    print(format_summary(summarize(args.out)))
    print(f"store written: {args.out} ({', '.join(splits)})")
    return 0


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="summarise a prepared store")
    p.add_argument("store", type=Path)
    p.add_argument("--json", action="store_true", help="print a JSON object keyed by split")
    p.set_defaults(func=_run_info)


def _run_info(args: argparse.Namespace) -> int:
    from onedet.data.store import format_summary, summarize

    summary = summarize(args.store)
    if args.json:
        _print_json(summary)
    else:
        print(format_summary(summary))
    return 0


# --- model ---------------------------------------------------------------------------------------------------


def _add_presets(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("presets", help="list the model presets with their parameter counts")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_run_presets)


def _run_presets(args: argparse.Namespace) -> int:
    from onedet.model.detector import describe_presets

    table = describe_presets()
    if args.json:
        _print_json(table)
    else:
        print(f"{'preset':<8} {'params':>14} {'image_size':>10}")
        for name, row in table.items():
            print(f"{name:<8} {row['params']:>14,} {row['image_size']:>10}")
    return 0


# --- train / eval --------------------------------------------------------------------------------------------


def _add_train(sub: argparse._SubParsersAction) -> None:
    from onedet.train.config import add_train_arguments  # no torch import: plain dataclasses

    p = sub.add_parser("train", help="fine-tune a detector on a prepared store")
    add_train_arguments(p)
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from onedet.train import train
    from onedet.train.config import train_config_from_args

    train(train_config_from_args(args))
    return 0


def _add_distill(sub: argparse._SubParsersAction) -> None:
    from onedet.train.config import add_train_arguments
    from onedet.train.distill_config import DistillConfig  # torch-free, like TrainConfig

    p = sub.add_parser("distill", help="train a smaller student from a trained teacher run")
    # The student, not a preset, says what is built; its image size comes from the teacher (or the spec).
    add_train_arguments(p, DistillConfig, exclude=("preset", "image_size", "cache_features"))
    p.set_defaults(func=_run_distill)


def _run_distill(args: argparse.Namespace) -> int:
    from onedet.train.config import train_config_from_args
    from onedet.train.distill import DistillConfig, distill

    result = distill(train_config_from_args(args, DistillConfig))
    print(f"student written: {result.run}")
    return 0


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="COCO metrics of a trained run on a store split")
    p.add_argument("--weights", type=Path, required=True, help="run folder (or its checkpoint folder)")
    p.add_argument("--data", type=Path, required=True, help="a store split, e.g. STORE/val")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_run_eval)


def _run_eval(args: argparse.Namespace) -> int:
    from onedet.evaluate import evaluate_run, format_metrics

    metrics = evaluate_run(args.weights, args.data, batch_size=args.batch_size)
    if args.json:
        _print_json(metrics)
    else:
        print(format_metrics(metrics))
    return 0


# --- deploy --------------------------------------------------------------------------------------------------


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="one ONNX file from uint8 pixels to boxes in original coordinates")
    p.add_argument("--weights", type=Path, required=True, help="run folder (or its checkpoint folder)")
    p.add_argument("--out", type=Path, required=True, help="the .onnx file to write")
    p.add_argument("--int8", action="store_true", help="also write int8 (dynamic, or static with --calibration)")
    p.add_argument("--calibration", type=Path, default=None, help="a store split to calibrate static int8 on")
    p.add_argument("--half", action="store_true", help="fp16 weights (for GPUs)")
    p.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from onedet.export import export

    paths = export(args.weights, args.out, int8=args.int8, half=args.half, calibration=args.calibration)
    for path in paths:
        print(f"wrote {path}")
    return 0


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="detect objects in images with a run folder or an .onnx file")
    p.add_argument("--model", type=Path, required=True, help="run folder or .onnx file")
    p.add_argument("sources", nargs="+", help="images, folders or globs")
    p.add_argument("--out", type=Path, required=True, help="folder for annotated images and detections.json")
    p.add_argument("--threshold", type=float, default=0.3)
    p.add_argument("--json", action="store_true", help="also print the detections")
    p.set_defaults(func=_run_predict)


def _run_predict(args: argparse.Namespace) -> int:
    from onedet.predict import predict_files

    detections = predict_files(args.model, args.sources, args.out, threshold=args.threshold)
    if args.json:
        _print_json(detections)
    else:
        print(f"{len(detections)} detections written to {args.out}")
    return 0


# --- quickstart ----------------------------------------------------------------------------------------------


def _add_quickstart(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quickstart", help="the whole loop on the built-in synthetic dataset, on the CPU")
    p.add_argument("--out", type=Path, default=Path("quickstart"))
    p.set_defaults(func=_run_quickstart)


def _run_quickstart(args: argparse.Namespace) -> int:
    from onedet.quickstart import quickstart

    quickstart(args.out)
    return 0


_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_prepare,
    _add_info,
    _add_presets,
    _add_train,
    _add_distill,
    _add_eval,
    _add_export,
    _add_predict,
    _add_quickstart,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="onedet", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"onedet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in _COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (OnedetError, FileNotFoundError, NotADirectoryError) as err:
        # Library code raises these with a message naming the file and what is wrong.
        if os.environ.get("ONEDET_DEBUG"):
            raise
        print(f"onedet {args.command}: error: {err}", file=sys.stderr)
        return 2
