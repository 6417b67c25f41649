"""LoRA fine-tuning of the backbone through peft: inject, save the adapters on their own, merge.

LoRA (Hu et al. 2021) adds a trainable low-rank update `B @ A` beside the frozen attention (`qkv`, `proj`)
and MLP (`fc1`, `fc2`) linears of every backbone block; the neck and head train as usual. The injection is a
transform of an existing `Detector` (peft's `inject_adapter_in_model` on `detector.backbone`), so module names
outside the adapted linears do not change. Checkpoints store the merged weights under the plain `Detector`
names (what predict and export load), and the adapters alone in peft's own format.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
from peft.tuners.lora import Linear as LoraLinear
from safetensors.torch import save_file
from torch import nn

LORA_TARGETS = ("qkv", "proj", "fc1", "fc2")
ADAPTER_NAME = "default"


def lora_target_names(backbone: nn.Module) -> list[str]:
    """Full names of the backbone's attention and MLP linears (not e.g. the patch embedding's conv)."""
    return [
        name
        for name, module in backbone.named_modules()
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in LORA_TARGETS
    ]


def apply_lora(model: nn.Module, rank: int = 8, alpha: float | None = None, dropout: float = 0.0) -> LoraConfig:
    """Inject LoRA adapters into `model.backbone` in place; only they train in the backbone afterwards.

    `alpha` defaults to `rank` (a scaling of 1). Returns the peft config (saved beside the adapters).
    """
    backbone = cast(nn.Module, model.backbone)
    targets = lora_target_names(backbone)
    if not targets:
        raise ValueError("the backbone has no attention/MLP linears named qkv, proj, fc1 or fc2")
    # peft annotates lora_alpha as int but only divides by it (scaling = lora_alpha / r): a float alpha works
    config = LoraConfig(
        r=rank,
        lora_alpha=rank if alpha is None else alpha,  # type: ignore[arg-type]
        lora_dropout=dropout,
        target_modules=targets,
        bias="none",
    )
    inject_adapter_in_model(config, backbone, adapter_name=ADAPTER_NAME)
    for name, param in backbone.named_parameters():
        param.requires_grad = "lora_" in name
    return config


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, LoraLinear) for m in model.modules())


def _lora_layers(model: nn.Module) -> dict[str, LoraLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLinear)}


@torch.no_grad()
def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with every adapter merged into its linear, under the plain (un-injected) names.

    The model itself is not changed, so training can go on; equals `merge_lora(copy).state_dict()`.
    """
    layers = _lora_layers(model)
    state = {}
    for key, value in model.state_dict().items():
        if ".lora_" in key:
            continue
        prefix, _, leaf = key.rpartition(".base_layer.")
        if not _:
            state[key] = value
            continue
        layer = layers[prefix]
        if leaf == "weight" and not layer.merged:
            value = value + layer.get_delta_weight(ADAPTER_NAME).to(value.dtype)
        state[f"{prefix}.{leaf}"] = value
    return state


def merge_lora(model: nn.Module) -> nn.Module:
    """Merge every adapter into its linear and put the plain linear back (peft's `merge_and_unload`, in place)."""
    for name, layer in _lora_layers(model).items():
        layer.merge(adapter_names=[ADAPTER_NAME])
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer.get_base_layer())
    return model


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' weights alone, in peft's key layout (relative to the backbone)."""
    return get_peft_model_state_dict(model.backbone, adapter_name=ADAPTER_NAME)


def save_adapter(config: LoraConfig, state: dict[str, torch.Tensor], folder: Path) -> None:
    """Write `adapter_config.json` and `adapter_model.safetensors` (peft's own files) into `folder`.

    `state` is `adapter_state_dict(model)` (taken e.g. while the EMA weights are applied).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(folder))
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, folder / "adapter_model.safetensors")
