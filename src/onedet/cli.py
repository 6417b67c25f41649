"""The `onedet` command line: a thin layer over the Python API.

Each sub-command is a `Command`: its arguments are generated from a torch-free options dataclass
(`onedet.options`; `TrainConfig` for `train`), and its `_run_<name>` handler imports the API lazily (so
`onedet --help` is instant and `onedet predict` on an ONNX file never imports torch) and calls the same function
a Python user would with the parsed options. A new option is one field in its dataclass.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, NoReturn

from onedet import __version__
from onedet.errors import OnedetError
from onedet.options import (
    EvalOptions,
    ExportOptions,
    InfoOptions,
    PredictOptions,
    PrepareOptions,
    PresetsOptions,
    QuickstartOptions,
    add_arguments,
    from_args,
    options_dict,
)
from onedet.train.config import TrainConfig
from onedet.train.distill_config import DistillConfig  # torch-free, like TrainConfig


def _print_json(obj: object) -> None:
    json.dump(obj, sys.stdout, indent=2)
    sys.stdout.write("\n")


# --- prepare / info ------------------------------------------------------------------------------------------


def _run_prepare(opts: PrepareOptions) -> int:
    from onedet.data.prepare import prepare
    from onedet.data.store import format_summary, summarize

    splits = prepare(**options_dict(opts))
    print(format_summary(summarize(opts.out)))
    print(f"store written: {opts.out} ({', '.join(splits)})")
    return 0


def _run_info(opts: InfoOptions) -> int:
    from onedet.describe import is_model_path

    if is_model_path(opts.store):
        from onedet.describe import describe, format_description

        if opts.plots is not None:
            raise OnedetError(f"{opts.store}: --plots draws a store's boxes; this is a model")
        description = describe(opts.store)
        if opts.json:
            _print_json(description)
        else:
            print(format_description(description))
        return 0
    from onedet.data.store import format_summary, summarize

    summary = summarize(opts.store)
    if opts.json:
        _print_json(summary)
    else:
        print(format_summary(summary))
    if opts.plots is not None:
        from onedet.data.store import plot_splits

        paths = plot_splits(opts.store, opts.plots)
        if not opts.json:
            print("plots written: " + ", ".join(map(str, paths)))
    return 0


# --- model ---------------------------------------------------------------------------------------------------


def _run_presets(opts: PresetsOptions) -> int:
    from onedet.model.detector import describe_presets

    table = describe_presets()
    if opts.json:
        _print_json(table)
    else:
        print(f"{'preset':<8} {'params':>14} {'image_size':>10}")
        for name, row in table.items():
            print(f"{name:<8} {row['params']:>14,} {row['image_size']:>10}")
    return 0


# --- train / eval --------------------------------------------------------------------------------------------


def _run_train(cfg: TrainConfig) -> int:
    from onedet.train import train

    train(cfg)
    return 0


def _run_distill(cfg: DistillConfig) -> int:
    from onedet.train.distill import distill

    result = distill(cfg)
    print(f"student written: {result.run}")
    return 0


def _run_eval(opts: EvalOptions) -> int:
    from onedet.evaluate import evaluate_run, format_metrics

    metrics = evaluate_run(**options_dict(opts, exclude=("json",)))
    if opts.json:
        _print_json({k: v for k, v in metrics.items() if k != "pr"})
    else:
        print(format_metrics(metrics))
        if opts.plots is not None:
            from onedet.train.report import METRIC_PLOTS

            print("plots written: " + ", ".join(str(opts.plots / name) for name in METRIC_PLOTS))
        if opts.record:
            print(f"each class's score threshold (the 'from score' column) recorded in {metrics['recorded']['file']}")
    return 0


# --- deploy --------------------------------------------------------------------------------------------------


def _run_export(opts: ExportOptions) -> int:
    from onedet.export import check_exports, export, format_check

    if opts.check is not None:  # a wrong path fails before the export, not after it
        from onedet.data.store import Store

        Store(opts.check)
    paths = export(**options_dict(opts, exclude=("check", "progress")))
    for path in paths:
        print(f"wrote {path}")
    if opts.check is not None:
        print(format_check(check_exports(paths, opts.check, progress=opts.progress), opts.check))
    return 0


def _run_predict(opts: PredictOptions) -> int:
    from onedet.predict import predict_files

    detections = predict_files(**options_dict(opts, exclude=("json",)))
    if opts.json:
        _print_json(detections)
    else:
        counts = Counter(row["category"] for row in detections)
        per_class = ", ".join(f"{n} {name}" for name, n in counts.most_common())
        print(f"{len(detections)} detections written to {opts.out}" + (f" ({per_class})" if per_class else ""))
    return 0


# --- quickstart ----------------------------------------------------------------------------------------------


def _run_quickstart(opts: QuickstartOptions) -> int:
    from onedet.quickstart import quickstart

    quickstart(opts.out)
    return 0


class Command(NamedTuple):
    name: str
    help: str
    options: type
    """The options dataclass its arguments are generated from."""
    run: Callable[[Any], int]
    """Called with an instance of `options`."""
    exclude: tuple[str, ...] = ()
    """Fields of `options` the command does not take (they keep their defaults)."""


COMMANDS: list[Command] = [
    Command("prepare", "read a COCO / YOLO / VOC dataset into a memory-mapped store", PrepareOptions, _run_prepare),
    Command("info", "summarise a prepared store, an exported model or a run", InfoOptions, _run_info),
    Command("presets", "list the model presets with their parameter counts", PresetsOptions, _run_presets),
    Command("train", "fine-tune a detector on a prepared store", TrainConfig, _run_train),
    # The student spec (PRESET:FIELD=VALUE,...), not a preset and --model.FIELD, says what a distillation builds.
    Command(
        "distill",
        "train a smaller student from a trained teacher run",
        DistillConfig,
        _run_distill,
        exclude=("preset", "image_size", "cache_features", "model"),
    ),
    Command("eval", "COCO metrics of a trained run on a store split", EvalOptions, _run_eval),
    Command("export", "one ONNX file from uint8 pixels to boxes in original coordinates", ExportOptions, _run_export),
    Command(
        "predict",
        "detect objects in images and videos with a run folder or an .onnx file",
        PredictOptions,
        _run_predict,
    ),
    Command(
        "quickstart", "the whole loop on the built-in synthetic dataset, on the CPU", QuickstartOptions, _run_quickstart
    ),
]


class _Parser(argparse.ArgumentParser):
    """argparse's parser with a short error: the message and where the options are listed.

    argparse prints the whole usage before a usage error, which for `train` or `distill` (forty options) is a
    screenful that pushes the one line that matters off the top. Sub-parsers are made with the same class.
    """

    commands: dict[str, _Parser]
    """The top-level parser's sub-parsers by command name (set by `build_parser`)."""

    def error(self, message: str) -> NoReturn:
        # A misspelt command or choice gets the nearest one (Python 3.14's argparse has `suggest_on_error`; 3.11
        # does not). Read from argparse's message, so another wording only loses the suggestion.
        if found := re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message):
            close = difflib.get_close_matches(found[1], re.findall(r"'([^']*)'", found[2]), n=1)
            message += f"; did you mean {close[0]!r}?" if close else ""
        self.exit(2, f"{self.prog}: error: {message}\n(`{self.prog} --help` lists the options)\n")

    def unrecognized(self, extra: Sequence[str]) -> NoReturn:
        """The error for arguments no option takes, with the nearest option to a misspelt `--flag`. argparse
        reports them from the top-level parser, which would point at `onedet --help`, not at the command's."""
        options = [o for action in self._actions for o in action.option_strings if o.startswith("--")]
        flags = [word.split("=", 1)[0] for word in extra if word.startswith("--")]
        close = [match for flag in flags for match in difflib.get_close_matches(flag, options, n=1)]
        self.error(f"unrecognized arguments: {' '.join(extra)}" + (f"; did you mean {close[0]!r}?" if close else ""))


def build_parser() -> _Parser:
    parser = _Parser(prog="onedet", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"onedet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.help)
        add_arguments(p, command.options, command.exclude)
        p.set_defaults(command_spec=command)
    parser.commands = sub.choices  # argparse's own name -> sub-parser map
    return parser


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reading end has closed (`onedet info RUN | head`): poll reports POLLERR on
    the writing end of such a pipe, so a broken pipe elsewhere (a socket) is not mistaken for it."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), stdout replaced or closed
        return False


def _quiet_after_broken_pipe() -> int:
    """What a Unix tool does when its reader goes away: stop without a message. stdout is pointed at /dev/null
    first so the interpreter's final flush does not raise again (the Python documentation's recipe, "Note on
    SIGPIPE"); the exit status is 128 + SIGPIPE, as a shell reports for a process killed by it."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 141


def main(argv: Sequence[str] | None = None) -> int:
    try:
        status = _main(argv)
        sys.stdout.flush()  # here, not at the interpreter's exit, where a closed pipe would print a traceback
        return status
    except BrokenPipeError:
        if os.environ.get("ONEDET_DEBUG") or not _stdout_reader_gone():
            raise
        return _quiet_after_broken_pipe()


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        parser.commands[args.command].unrecognized(extra)
    command: Command = args.command_spec
    del args.command, args.command_spec
    try:
        return command.run(from_args(command.options, args))
    except (OnedetError, OSError) as err:
        # Library code raises OnedetError with a message naming the file and what is wrong; an OSError that no
        # check turned into one (a folder made read-only, a full disk) names its file too: "[Errno 13] ...: PATH".
        # A closed stdout (`onedet info RUN | head`) is not an error: main() stops quietly.
        if os.environ.get("ONEDET_DEBUG") or (isinstance(err, BrokenPipeError) and _stdout_reader_gone()):
            raise
        print(f"onedet {command.name}: error: {err}", file=sys.stderr)
        return 2
