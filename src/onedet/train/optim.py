"""AdamW with parameter groups and a warm-up + cosine learning-rate schedule counted in epochs.

Weight decay is never applied to norms, biases, position embeddings or other 1-d tensors (the usual
practice since BERT / ViT: decaying a LayerNorm gain towards zero only hurts). The schedule is defined in
epochs, so the same defaults behave the same on 200 images as on 200,000 (schedules that count warm-up in COCO
iterations end warm-up late on small sets); it is evaluated per optimizer step.
"""

from __future__ import annotations

import math

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
    schedule = CosineSchedule(steps_per_epoch=steps_per_epoch, epochs=epochs, warmup_epochs=warmup_epochs, final=final)
    return schedule(step)


class CosineSchedule:
    """`lr_factor` as a stateful callable whose length can be refitted mid-run without a jump in the rate.

    A time budget changes the schedule's length after an epoch (`refit`). Recomputing the cosine over the new
    length would move the learning rate at once: up when the length grows (the pace got faster), down when it
    shrinks. Instead the cosine goes on from the progress it had reached, over the steps that are left. With no
    refit this is exactly `lr_factor`. A callable object, so LambdaLR's `state_dict` saves its fields (the
    checkpoint's scheduler state) and `--resume` restores them.
    """

    def __init__(self, *, steps_per_epoch: int, epochs: int, warmup_epochs: float, final: float = 0.01) -> None:
        self.steps_per_epoch = steps_per_epoch
        self.epochs = epochs
        self.warmup_epochs = warmup_epochs
        self.final = final
        self.anchor_step = 0  # the cosine's progress was `anchor_progress` at this step (the last refit)
        self.anchor_progress = 0.0

    def _warmup(self) -> int:
        total = max(1, self.steps_per_epoch * self.epochs)
        return min(total - 1, round(self.warmup_epochs * self.steps_per_epoch))

    def progress(self, step: int) -> float:
        """How far along the cosine `step` is, from 0 (end of warm-up) to 1 (the last step)."""
        total = max(1, self.steps_per_epoch * self.epochs)
        start = max(self._warmup(), self.anchor_step)
        done = min(1.0, max(0, step - start) / max(1, total - start))
        return self.anchor_progress + (1.0 - self.anchor_progress) * done

    def __call__(self, step: int) -> float:
        if step < self._warmup():
            return (step + 1) / (self._warmup() + 1)
        return self.final + (1.0 - self.final) * 0.5 * (1.0 + math.cos(math.pi * self.progress(step)))

    def refit(self, step: int, epochs: int) -> None:
        """Make the schedule `epochs` long from optimizer step `step` on, continuing from the rate it has now (in
        warm-up the progress is 0, so the cosine starts after it as usual)."""
        self.anchor_progress = self.progress(step)
        self.anchor_step = step
        self.epochs = epochs


def epochs_in_budget(epochs_done: int, max_epochs: int, seconds_left: float, seconds_per_epoch: float) -> int:
    """How many epochs the schedule should have to end within a time budget at the measured pace: at least one
    more than `epochs_done`, never more than `max_epochs`."""
    return min(max_epochs, epochs_done + max(1, int(seconds_left / max(seconds_per_epoch, 1e-9))))
