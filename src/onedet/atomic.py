"""Atomic writes: a file, or a whole folder, appears complete under its name or not at all.

`write_text` / `write_json` write `.NAME.tmp-PID` beside the target and rename it over the target. `replace_folder`
fills `.NAME.tmp-PID`, then swaps it in with two renames (the previous folder to `.NAME.old-PID`, the new one to
`NAME`) and removes the old one. A crash before the renames leaves the previous folder untouched; a crash between
them leaves `.NAME.old-PID`, which readers may recover (`onedet.checkpoint.checkpoint_dir` does). Torch-free.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text(path: str | Path, text: str) -> Path:
    """Write `text` to `path` atomically (a temporary file beside it, then a rename); returns `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json(path: str | Path, obj: Any, indent: int | None = 2) -> Path:
    """`obj` as JSON (with a final newline when indented) at `path`, atomically; returns `path`."""
    return write_text(path, json.dumps(obj, indent=indent) + ("\n" if indent is not None else ""))


def replace_folder(folder: str | Path, fill: Callable[[Path], None], fsync: bool = False) -> Path:
    """Call `fill(tmp)` on an empty `.NAME.tmp-PID` beside `folder`, then swap it in for `folder`; returns `folder`.

    With `fsync`, every file and the folders are flushed to disk before the swap (a power cut cannot leave a
    renamed but empty file). On any error the temporary folder is removed, the previous `folder` is put back if
    it had been moved aside, and the error propagates.
    """
    folder = Path(folder)
    parent = folder.parent
    tmp = parent / f".{folder.name}.tmp-{os.getpid()}"
    old = parent / f".{folder.name}.old-{os.getpid()}"
    try:
        parent.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        fill(tmp)
        if fsync:
            for path in tmp.rglob("*"):
                if path.is_file():
                    _fsync(path)
            _fsync(tmp)
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        if fsync:
            _fsync(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not folder.exists():
            os.replace(old, folder)  # put the previous folder back
        raise
    shutil.rmtree(old, ignore_errors=True)
    return folder
