"""Progress bars for long work, shown only where someone watches: on a terminal."""

from __future__ import annotations

import sys
from typing import Any


def progress_bar(total: int | None, desc: str, unit: str) -> Any:
    """A tqdm bar on stderr when it is a terminal (and tqdm is installed: the serving image has no tqdm), else None
    (in a log every redraw would be one more line)."""
    if not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total or None, desc=desc, unit=unit, leave=False)
