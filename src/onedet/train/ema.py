"""Exponential moving average of the trainable weights, used for evaluation and saved as the model.

Written by hand rather than with timm's `ModelEmaV3` because that one deep-copies and updates every tensor of
the model: with a frozen 86M-parameter backbone that doubles its memory and spends each step averaging weights
that never change. This one keeps a shadow copy of the trainable parameters only (the frozen ones are equal
in both by definition) and uses timm's decay warm-up (`1 - (1 + step) ** -power`), so that short runs on small
datasets are not dominated by the random initialisation.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class WeightEma:
    """EMA of `model`'s trainable parameters (by name) and of its floating-point buffers."""

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup_power: float = 2 / 3) -> None:
        self.decay = decay
        self.warmup_power = warmup_power
        self.num_updates = 0
        self.shadow: dict[str, torch.Tensor] = {
            name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad
        }
        self.shadow.update({name: b.detach().clone() for name, b in model.named_buffers() if b.is_floating_point()})

    def current_decay(self) -> float:
        return min(self.decay, 1.0 - (1.0 + self.num_updates) ** -self.warmup_power)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the shadow weights towards the model's current weights."""
        self.num_updates += 1
        weight = 1.0 - self.current_decay()
        named: dict[str, torch.Tensor] = dict(model.named_parameters())
        named.update(model.named_buffers())
        ema_values = list(self.shadow.values())
        model_values = [named[name].detach() for name in self.shadow]
        torch._foreach_lerp_(ema_values, model_values, weight)

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[nn.Module]:
        """Temporarily load the EMA weights into `model` (restored on exit)."""
        named: dict[str, torch.Tensor] = dict(model.named_parameters())
        named.update(model.named_buffers())
        backup = {name: named[name].detach().clone() for name in self.shadow}
        with torch.no_grad():
            for name, value in self.shadow.items():
                named[name].copy_(value)
        try:
            yield model
        finally:
            with torch.no_grad():
                for name, value in backup.items():
                    named[name].copy_(value)

    def state_dict(self) -> dict:
        return {"num_updates": self.num_updates, "decay": self.decay, "shadow": dict(self.shadow)}

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.shadow) ^ set(state["shadow"])
        if missing:
            raise KeyError(f"EMA state does not match the model: {sorted(missing)[:5]}")
        self.num_updates = int(state["num_updates"])
        with torch.no_grad():
            for name, value in state["shadow"].items():
                self.shadow[name].copy_(value)
