"""Distributed data-parallel training through PyTorch's own launcher (`torchrun --nproc_per_node N -m onedet train`).

torchrun sets `RANK`, `LOCAL_RANK`, `WORLD_SIZE` (and the rendezvous address); without them this is a single
process and every helper here is a no-op. The process group uses NCCL on CUDA and gloo on CPU.
"""

from __future__ import annotations

import os
from typing import NamedTuple, TypeVar

import torch
import torch.distributed as dist
from torch import nn


class DistInfo(NamedTuple):
    rank: int
    local_rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_info() -> DistInfo:
    """Rank, local rank and world size from the environment torchrun sets (0, 0, 1 without it)."""
    return DistInfo(
        int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    )


def select_device(name: str, info: DistInfo) -> torch.device:
    """`auto` picks CUDA when present (one GPU per local rank under torchrun), else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", info.local_rank % max(1, torch.cuda.device_count()))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def init(device: torch.device) -> DistInfo:
    """Join the process group when launched by torchrun (a no-op for a single process)."""
    info = env_info()
    if info.world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return info


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def shutdown() -> None:
    if is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """DDP-wrap the model when running distributed (gradients averaged across ranks at each backward)."""
    if not is_initialized():
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """The mean of a tensor across ranks (itself when single-process)."""
    if not is_initialized():
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / dist.get_world_size()


T = TypeVar("T")


def broadcast_object(obj: T, src: int = 0) -> T:
    """A picklable object from rank `src` to every rank (used for small control messages only)."""
    if not is_initialized():
        return obj
    box: list[T] = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
