"""`BufferPool`: recycled CPU buffers for batches, the loader's uint8 reads and the augmentation's outputs.

A fresh 16 x 640 px batch is a fresh mapping whose thousands of page faults cost more than filling it
(BENCHMARKS.md, Data loading), so batch-sized tensors come from a small pool. Hand-written because no library
offers this: a buffer is free when its storage's use count (every tensor and view of it, and every numpy array
made from one, holds a reference) is back to what it was when only the pool held it, so a batch a caller keeps
is never overwritten.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import torch
from torch import Tensor

# The number of references to a storage. A private torch function, hence the fallback: without it nothing is
# recycled (always correct, only slower).
use_count = getattr(torch._C, "_storage_Use_Count", None)


class BufferPool:
    """A bounded, thread-safe pool of CPU buffers, each reused only when nothing outside the pool holds it.

    A free buffer at least as large as asked serves any shape and dtype of that size (a last, smaller batch uses
    the start of a full one); one too small is replaced (multi-scale sizes). Beyond `capacity` buffers, tensors
    are freshly allocated, so a caller that keeps every batch costs what it would without a pool, and stays
    correct.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._buffers: list[tuple[Tensor, Any, int]] = []  # (flat uint8 buffer, its storage, idle use count)

    def take(self, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        """An uninitialised tensor of `shape` and `dtype` on the CPU, from a free buffer when there is one."""
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        if use_count is None or self.capacity <= 0:
            return torch.empty(shape, dtype=dtype)
        with self._lock:
            small = None
            for k, (buffer, storage, idle) in enumerate(self._buffers):
                if use_count(storage._cdata) == idle:
                    if len(buffer) >= nbytes:
                        # the view is what marks the buffer as in use, until every view of it is gone
                        return buffer[:nbytes].view(dtype).view(shape)
                    small = k
            if small is not None:
                del self._buffers[small]
            elif len(self._buffers) >= self.capacity:
                return torch.empty(shape, dtype=dtype)
            buffer = torch.empty(nbytes, dtype=torch.uint8)
            storage = buffer.untyped_storage()
            self._buffers.append((buffer, storage, use_count(storage._cdata)))
            return buffer.view(dtype).view(shape)

    def __len__(self) -> int:
        return len(self._buffers)
