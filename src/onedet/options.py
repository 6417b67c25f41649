"""Every command's options as a small typed dataclass, and the argparse generator that turns one into a CLI.

One field is one `--flag`: typed from its annotation (`X | None` accepts `none`; a `Literal` gives choices; a bool
gives `--flag/--no-flag`), with the docstring under the field as its help (the litgpt / jsonargparse convention,
read along the class's MRO so that a subclass of a config, e.g. a `DistillConfig(TrainConfig)`, gets its CLI
for free). Field metadata may say `positional=True`, or `fields_of=SomeDataclass` for a `dict` field, which then
gets one `--NAME.FIELD=VALUE` flag per field of that dataclass (litgpt style; the value parsed by the field's type,
tuples as JSON lists or comma lists). The defaults written here are the Python API's defaults too. Torch-free,
so building the command line stays instant.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import itertools
import json
import textwrap
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

# --- the generator -----------------------------------------------------------------------------------------------


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Each field's docstring (the string literal right under it), read from the source of `cls` and its bases."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, after in itertools.pairwise(body):
            is_field = isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
            if is_field and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
                docs[node.target.id] = str(after.value.value)
    return docs


def _optional(parse: Any) -> Any:
    def parse_or_none(text: str) -> Any:
        return None if text.lower() in ("none", "null") else parse(text)

    parse_or_none.__name__ = getattr(parse, "__name__", "value")
    return parse_or_none


def _parse_bool(text: str) -> bool:
    value = text.lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


def _value_parser(hint: Any) -> Any:
    """A `str -> value` parser for a `--NAME.FIELD=VALUE` flag of type `hint`."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        return _optional(_value_parser(args[0]))
    origin = typing.get_origin(hint)
    if hint is bool:
        return _parse_bool
    if origin is tuple:
        item = typing.get_args(hint)[0]
        parse_item = _value_parser(item)

        def parse_tuple(text: str) -> tuple:
            text = text.strip()
            if text.startswith("(") and text.endswith(")"):  # Python's spelling, as student specs take it: "()"
                text = text[1:-1]
            values = json.loads(text) if text.startswith("[") else [v for v in text.split(",") if v.strip()]
            return tuple(parse_item(str(v).strip()) if isinstance(v, str) else item(v) for v in values)

        parse_tuple.__name__ = "tuple"
        return parse_tuple
    if origin is dict:
        return json.loads
    return hint


def _split_hint(hint: Any) -> tuple[Any, bool]:
    """(the type inside `X | None`, whether it was optional)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0], True
    return hint, False


def add_arguments(parser: argparse.ArgumentParser, cls: type, exclude: tuple[str, ...] = ()) -> None:
    """Declare one argument per field of the dataclass `cls` (see the module docstring), less `exclude` (fields a
    command does not take; they keep their defaults)."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        if "fields_of" in f.metadata:
            add_nested_arguments(parser, f.name, f.metadata["fields_of"])
            continue
        base, optional = _split_hint(hints[f.name])
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        kwargs: dict[str, Any] = {"help": docs.get(f.name, "").replace("%", "%%")}
        if not required:
            kwargs["default"] = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
            kwargs["help"] += " (default: %(default)s)"
        if typing.get_origin(base) is list:
            base, kwargs["nargs"] = typing.get_args(base)[0], "+" if required else "*"
        if f.metadata.get("positional"):
            names = [f.name]
        else:
            names = ["--" + f.name.replace("_", "-")]
            if required:
                kwargs["required"] = True
        if base is bool:
            parser.add_argument(*names, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        if typing.get_origin(base) is Literal:
            kwargs["choices"] = list(typing.get_args(base))
            base = type(kwargs["choices"][0])
        kwargs["type"] = _optional(base) if optional else base
        parser.add_argument(*names, **kwargs)


def add_nested_arguments(parser: argparse.ArgumentParser, name: str, cls: type) -> None:
    """`--NAME.FIELD=VALUE` for every field of `cls`; only the flags given reach the parsed namespace."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    group = parser.add_argument_group(f"{name} overrides", f"{cls.__name__} fields, e.g. --{name}.FIELD=VALUE")
    for f in dataclasses.fields(cls):
        group.add_argument(
            f"--{name}.{f.name}",
            dest=f"{name}.{f.name}",
            type=_value_parser(hints[f.name]),
            default=argparse.SUPPRESS,
            metavar=f.name.upper(),
            help=docs.get(f.name, "").replace("%", "%%"),
        )


def from_args(cls: type, args: argparse.Namespace) -> Any:
    """The `cls` instance of a command line parsed with `add_arguments(parser, cls)`."""
    values = vars(args)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if "fields_of" in f.metadata:
            kwargs[f.name] = nested_values(args, f.name)
        elif f.name in values:
            kwargs[f.name] = values[f.name]
    return cls(**kwargs)


def nested_values(args: argparse.Namespace, name: str) -> dict[str, Any]:
    """The `--NAME.FIELD=VALUE` flags given on a command line, as `{FIELD: value}`."""
    prefix = name + "."
    return {k[len(prefix) :]: v for k, v in vars(args).items() if k.startswith(prefix)}


def options_dict(opts: Any, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """The fields of an options dataclass as keyword arguments, less `exclude` (display-only options)."""
    return {f.name: getattr(opts, f.name) for f in dataclasses.fields(opts) if f.name not in exclude}


# --- the commands' options (TrainConfig, in onedet.train.config, is `onedet train`'s) ------------------------------


def _positional() -> dict[str, Any]:
    return {"positional": True}


@dataclass
class PrepareOptions:
    source: Path = field(metadata=_positional())
    """Dataset folder (or a COCO JSON file)."""
    out: Path
    """Store folder; one sub-folder per split."""
    format: Literal["auto", "coco", "yolo", "voc"] = "auto"
    """Annotation format (`auto` detects it)."""
    image_size: int = 640
    """Square letterbox size in pixels."""
    skip_bad: bool = False
    """Skip unreadable images (counted and listed)."""
    workers: int | None = None
    """Decoding processes (default: all cores)."""
    layout: Literal["raw", "compact"] = "raw"
    """`compact` stores JPEG bytes."""
    allow_background: bool = False
    """Accept splits where no image (or under half of them, while labels exist elsewhere) has labels."""
    unlabeled: bool = False
    """Every image under SOURCE as one split named `unlabeled`, without boxes (for `onedet distill --unlabeled`)."""


@dataclass
class InfoOptions:
    store: Path = field(metadata=_positional())
    """A prepared store folder; or a model: an exported .onnx file, a run or a checkpoint folder (its classes, own
    score thresholds, input size and precision, and for a run how it was trained and its val AP)."""
    json: bool = False
    """Print JSON (for a store, an object keyed by split)."""
    plots: Path | None = None
    """A folder to draw each split's boxes into (boxes_<split>.png: per class, sizes, positions); stores only."""


@dataclass
class PresetsOptions:
    json: bool = False
    """Print JSON."""


@dataclass
class EvalOptions:
    weights: Path
    """Run folder (or its checkpoint folder), or an exported .onnx file (run by onnxruntime on the same images: the
    accuracy of the file you ship, int8 or fp16 included)."""
    data: Path
    """A store split, e.g. STORE/val."""
    batch_size: int = 8
    """Images per forward pass."""
    plots: Path | None = None
    """A folder to draw this split's pr.png, f1.png and confusion_matrix.png into."""
    record: bool = False
    """Record each class's best-F1 score on this split as the checkpoint's own score thresholds (its model.json),
    which predict and export then use, as training does with the val split at its end: for a run trained before
    runs recorded them, for `last`, or to choose them on another split."""
    json: bool = False
    """Print the metrics as JSON (less the precision-recall curves, as the run's metrics.json)."""
    progress: bool = True
    """Show a progress bar (on a terminal)."""


@dataclass
class ExportOptions:
    weights: Path
    """Run folder (or its checkpoint folder)."""
    out: Path
    """The .onnx file to write."""
    int8: bool = False
    """Also write int8 (dynamic, or static with --calibration)."""
    calibration: Path | None = None
    """A store split to calibrate static int8 on."""
    half: bool = False
    """Also write fp16 weights (for GPUs)."""
    check: Path | None = None
    """A store split (e.g. STORE/val) to evaluate and time every file written on, through onnxruntime: a table of
    their AP, size and CPU latency on this machine against the fp32 file's, and a warning for a variant that loses
    more than 1% of its AP."""
    progress: bool = True
    """Show a progress bar while --check evaluates (on a terminal)."""


@dataclass
class PredictOptions:
    model: Path
    """Run folder or .onnx file."""
    sources: list[str] = field(metadata=_positional())
    """Images, videos (PyAV: onedet[video]), folders, globs or stream URLs (rtsp://, http://, ...)."""
    out: Path
    """Folder for annotated images and detections.json."""
    threshold: float | None = None
    """Minimum score of a detection, for every class (default: the model's own per class, the score where the
    class's F1 was best on the val split in training; 0.3 for a class, or a model, without one)."""
    json: bool = False
    """Also print the detections."""
    track: bool = False
    """Follow objects from frame to frame in videos (ByteTrack: onedet[track]); JSON rows get a track_id."""
    max_frames: int | None = None
    """Stop each video or stream after this many frames (a stream also stops at Ctrl-C, keeping what was done)."""
    dataset: bool = False
    """Also write the images and their detections as a YOLO dataset in OUT/dataset: pre-annotation to correct in a
    labelling tool, then `onedet prepare`."""


@dataclass
class QuickstartOptions:
    out: Path = Path("quickstart")
    """Folder for the synthetic data, store, run, predictions and ONNX file."""
