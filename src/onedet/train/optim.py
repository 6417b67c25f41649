"""AdamW with parameter groups and a warm-up + cosine learning-rate schedule counted in epochs.

Weight decay is never applied to norms, biases, position embeddings or other 1-d tensors (the usual
practice since BERT / ViT: decaying a LayerNorm gain towards zero only hurts). The schedule is defined in
epochs, so the same defaults behave the same on 200 images as on 200,000 (schedules that count warm-up in COCO
iterations end warm-up late on small sets); it is evaluated per optimizer step.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

_NO_DECAY_NAMES = ("pos_embed", "cls_token", "reg_token", "relative_position", "rel_pos", "absolute_pos")


def _decays(name: str, param: torch.Tensor) -> bool:
    return param.ndim > 1 and not any(key in name for key in _NO_DECAY_NAMES)


def param_groups(model: nn.Module, *, lr: float, weight_decay: float, backbone_lr_scale: float = 1.0) -> list[dict]:
    """Trainable parameters in up to four groups: (backbone or not) x (decay or not).

    Parameters whose name starts with `backbone.` get `lr * backbone_lr_scale`. Each group records its
    `base_lr` so that the schedule can scale it.
    """
    groups: dict[tuple[bool, bool], list[torch.Tensor]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        in_backbone = name.startswith("backbone.") or ".backbone." in name
        groups.setdefault((in_backbone, _decays(name, param)), []).append(param)
    out = []
    for (in_backbone, decays), params in sorted(groups.items()):
        group_lr = lr * (backbone_lr_scale if in_backbone else 1.0)
        out.append(
            {
                "params": params,
                "lr": group_lr,
                "base_lr": group_lr,
                "weight_decay": weight_decay if decays else 0.0,
                "name": f"{'backbone' if in_backbone else 'head'}_{'decay' if decays else 'no_decay'}",
            }
        )
    return out


def build_optimizer(
    model: nn.Module, *, lr: float, weight_decay: float, backbone_lr_scale: float = 1.0
) -> torch.optim.AdamW:
    """AdamW over the model's trainable parameters (fused on CUDA)."""
    groups = param_groups(model, lr=lr, weight_decay=weight_decay, backbone_lr_scale=backbone_lr_scale)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    fused = all(p.is_cuda for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), fused=fused or None)


def lr_factor(step: int, *, steps_per_epoch: int, epochs: int, warmup_epochs: float, final: float = 0.01) -> float:
    """Learning-rate multiplier at optimizer step `step` (0-based): linear warm-up, then cosine to `final`."""
    total = max(1, steps_per_epoch * epochs)
    warmup = min(total - 1, round(warmup_epochs * steps_per_epoch))
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    steps_per_epoch: int,
    epochs: int | Callable[[], int],
    warmup_epochs: float,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step LambdaLR with `lr_factor`; its state (the step count) is plain ints, safe to checkpoint.

    `epochs` may be a callable, read at every step, so that a time budget can shorten the schedule mid-run.
    """

    def factor(step: int) -> float:
        total = epochs() if callable(epochs) else epochs
        return lr_factor(step, steps_per_epoch=steps_per_epoch, epochs=total, warmup_epochs=warmup_epochs)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def epochs_in_budget(epochs_done: int, max_epochs: int, seconds_left: float, seconds_per_epoch: float) -> int:
    """How many epochs the schedule should have to end within a time budget at the measured pace: at least one
    more than `epochs_done`, never more than `max_epochs`."""
    return min(max_epochs, epochs_done + max(1, int(seconds_left / max(seconds_per_epoch, 1e-9))))
