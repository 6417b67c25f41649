"""LoRA fine-tuning: what trains, merged equals unmerged, adapters saved on their own, a LoRA run end to end."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from train_helpers import make_store, tiny_config

from onedet.config import ModelConfig
from onedet.model.detector import Detector
from onedet.model.lora import apply_lora, has_lora, lora_target_names, merge_lora, merged_state_dict


def _detector() -> Detector:
    torch.manual_seed(0)
    model = Detector(ModelConfig.from_preset("tiny", num_classes=4, image_size=128))
    model.set_backbone_frozen(True)
    return model


def _randomise_adapters(model: torch.nn.Module) -> None:
    # peft starts lora_B at zero (the update is 0); give it values so that merging has something to merge.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)


def test_adapters_go_on_attention_and_mlp_linears_only() -> None:
    model = _detector()
    targets = lora_target_names(model.backbone)
    depth = model.config.depth
    assert len(targets) == 4 * depth
    assert {t.rsplit(".", 1)[-1] for t in targets} == {"qkv", "proj", "fc1", "fc2"}
    assert not any(t.startswith("patch_embed") for t in targets)
    apply_lora(model, rank=4)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    backbone = [n for n in trainable if n.startswith("backbone.")]
    assert backbone and all(".lora_" in n for n in backbone), "in the backbone only adapters train"
    assert len(backbone) == 2 * len(targets)
    assert any(n.startswith("neck.") for n in trainable) and any(n.startswith("head.") for n in trainable)


def test_merged_equals_unmerged() -> None:
    model = _detector()
    apply_lora(model, rank=4)
    _randomise_adapters(model)
    model.eval()
    images = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        unmerged = model(images)
        plain = _detector().eval()
        plain.load_state_dict(merged_state_dict(model))  # strict: the plain Detector's names exactly
        merged = plain(images)
        in_place = merge_lora(copy.deepcopy(model))(images)
    assert not torch.equal(plain.backbone.blocks[0].attn.qkv.weight, _detector().backbone.blocks[0].attn.qkv.weight)
    torch.testing.assert_close(merged.logits, unmerged.logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(merged.boxes_xyxy, unmerged.boxes_xyxy, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(in_place.logits, unmerged.logits, rtol=1e-4, atol=1e-4)
    assert has_lora(model) and not has_lora(merge_lora(model))


@pytest.mark.slow
def test_a_lora_run_saves_merged_weights_and_the_adapters(tmp_path: Path) -> None:
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    from onedet.checkpoint import load_run, read_train_state
    from onedet.train.loop import Trainer

    store = make_store(tmp_path, num_images=24)
    trainer = Trainer(tiny_config(store, tmp_path / "run", finetune="lora", lora_rank=4, lr=5e-3))
    try:
        trainer.fit()
        images = torch.rand(2, 3, 128, 128)
        with trainer._ema_weights() as detector, torch.no_grad():
            detector.eval()
            expected = detector(images).logits
    finally:
        trainer.close()
    last = tmp_path / "run" / "weights" / "last"
    run = load_run(last)  # a plain Detector: LoRA merged into model.safetensors
    assert not has_lora(run.model)
    with torch.no_grad():
        torch.testing.assert_close(run.model(images).logits, expected, rtol=1e-4, atol=1e-4)

    adapter = last / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["peft_type"] == "LORA"
    weights = load_file(adapter / "adapter_model.safetensors")
    assert weights and all("lora_" in k for k in weights)
    fresh = _detector()
    inject_adapter_in_model(LoraConfig(**{k: config[k] for k in ("r", "lora_alpha", "target_modules")}), fresh.backbone)
    assert not set_peft_model_state_dict(fresh.backbone, weights).unexpected_keys
    # Resuming needs the un-merged base weights of the adapted linears: the train state keeps them.
    live = read_train_state(last)["model"]
    assert any(".base_layer." in k for k in live) and any(".lora_A." in k for k in live)
