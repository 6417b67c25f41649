"""Timing callables round-robin, so a machine's noise hits every variant alike: `onedet export --check` times the
files it wrote this way, and so do the scripts under benchmarks/."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def time_round_robin(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds per call of each callable, after one warm-up call each, timed in interleaved rounds.

    onnxruntime sessions timed this way need `OnnxDetector(..., spinning=False)` (its docstring says why).
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():  # warm-up
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}
