"""The CPU floating-point mode onedet's torch work runs in: denormal numbers flushed to zero (FTZ/DAZ).

Once a detector has trained for a while, some activations and gradients (attention probabilities, focal-loss
terms of confident background) fall below float32's normal range (1.2e-38). x86 CPUs handle such denormal
numbers in microcode, tens of times slower than normal ones: the quickstart's training steps became markedly
slower after a few epochs for that reason alone (BENCHMARKS.md, Training). Flushing them to zero changes results
by less than 1e-38 per value; GPUs do the same in their fast modes.

The flag is per thread, and threads inherit it when they are created: it must be set before torch starts its
intra-op thread pool (the first parallel op). `Detector.__init__` calls `flush_denormals()` first (training,
evaluation, predict and export all build one before any model work), and so does `prepare` (torch work that
comes before any model, e.g. in the quickstart). Set `ONEDET_KEEP_DENORMALS=1` to leave the CPU's mode alone.
"""

from __future__ import annotations

import functools
import os


@functools.cache
def flush_denormals() -> bool:
    """Flush denormals to zero in this thread and the threads it creates from now on; True if the CPU supports it.

    Done once per process (cached); a no-op when `ONEDET_KEEP_DENORMALS` is set.
    """
    if os.environ.get("ONEDET_KEEP_DENORMALS"):
        return False
    import torch

    return bool(torch.set_flush_denormal(True))
