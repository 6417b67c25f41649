"""The detector: config and presets, parameter counts, output shapes and padding, freezing, autocast, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from onedet.cli import main
from onedet.config import PRESETS, ModelConfig, from_preset
from onedet.errors import OnedetError
from onedet.model.detector import Detector, DetectorOutput, build_detector, describe_presets


@pytest.fixture(scope="module")
def tiny() -> Detector:
    torch.manual_seed(0)
    return build_detector(from_preset("tiny", num_classes=3, freeze_backbone=True))


def test_preset_parameter_counts():
    table = describe_presets()
    assert set(table) == set(PRESETS) == {"base", "small", "tiny"}
    assert 80e6 <= table["base"]["params"] <= 100e6
    assert 15e6 <= table["small"]["params"] <= 40e6
    assert 1e6 <= table["tiny"]["params"] <= 6e6
    assert table["base"]["image_size"] == 640 and table["tiny"]["image_size"] == 256
    # the meta-device count is the count of the real model
    real = Detector(from_preset("tiny"))
    assert table["tiny"]["params"] == sum(p.numel() for p in real.parameters())


@pytest.mark.parametrize(
    ("preset", "timm_name", "timm_kwargs"),
    [
        ("base", "vit_base_patch16_clip_quickgelu_224.openai", {}),
        ("small", "vit_small_patch16_224.augreg_in21k", {}),
        ("tiny", "vit_tiny_patch16_224", {"depth": 6}),
    ],
)
def test_backbone_has_the_timm_layout_of_its_hub_name(preset, timm_name, timm_kwargs):
    """Each preset's backbone is the timm model its hub name builds, minus the final norm and classifier."""
    timm = pytest.importorskip("timm")
    cfg = from_preset(preset, pretrained=None)
    assert cfg.backbone == timm_name
    with torch.device("meta"):
        ref = timm.create_model(timm_name, num_classes=0, img_size=cfg.image_size, **timm_kwargs)
        model = Detector(cfg, init_backbone=False)
    ours = {k: v.shape for k, v in model.backbone.state_dict().items()}
    theirs = {k: v.shape for k, v in ref.state_dict().items() if not k.startswith("norm.")}
    assert ours == theirs
    x = torch.linspace(-4, 4, 101)  # the same activation (QuickGELU for OpenAI CLIP), whatever its class
    torch.testing.assert_close(ref.blocks[0].mlp.act.to("cpu")(x), model.backbone.blocks[0].mlp.act.to("cpu")(x))
    assert ref.blocks[0].norm1.eps == model.backbone.blocks[0].norm1.eps


def test_cli_presets_json(capsys):
    assert main(["presets", "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert table == describe_presets()
    assert all(isinstance(row["params"], int) and row["image_size"] > 0 for row in table.values())


def test_config_round_trip_and_overrides():
    cfg = from_preset("small", num_classes=7, strides=[8, 16, 32, 64])
    assert cfg.embed_dim == 384 and cfg.num_classes == 7 and cfg.strides == (8, 16, 32, 64)
    data = json.loads(json.dumps(cfg.to_dict()))
    assert ModelConfig.from_dict(data) == cfg
    assert ModelConfig() == from_preset("base")
    assert set(cfg.loss_weights) >= {"focal", "l1", "giou"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"image_size": 600}, "not a multiple of patch_size \\* window_size = 160"),
        ({"taps": (12,)}, "outside 0..11"),
        ({"strides": (8, 128)}, "strides must be"),
        ({"act": "relu"}, "act must be"),
        ({"no_such_field": 1}, "unknown model config keys"),
    ],
)
def test_bad_config_is_a_clear_error(kwargs, message):
    with pytest.raises(OnedetError, match=message):
        from_preset("base", **kwargs)


def test_unknown_preset():
    with pytest.raises(OnedetError, match="unknown model preset 'huge'"):
        from_preset("huge")


def _num_locations(height: int, width: int, strides=(8, 16, 32)) -> int:
    return sum((height // s) * (width // s) for s in strides)


@pytest.mark.parametrize(("height", "width", "padded"), [(256, 256, (256, 256)), (200, 300, (256, 384))])
def test_output_shapes_and_padding(tiny, height, width, padded):
    tiny.eval()
    with torch.no_grad():
        out = tiny(torch.rand(2, 3, height, width))
    assert isinstance(out, DetectorOutput)
    n = _num_locations(*padded)
    assert out.logits.shape == (2, n, 3) and out.boxes_xyxy.shape == (2, n, 4)
    assert out.points.shape == (n, 2) and out.strides.shape == (n,)
    assert out.aux_logits is None and out.aux_boxes_xyxy is None
    assert out.logits.dtype == out.boxes_xyxy.dtype == torch.float32
    # every box contains its location's point (distances are >= 0), and points lie inside the padded image
    x, y = out.points[:, 0], out.points[:, 1]
    boxes = out.boxes_xyxy
    assert (boxes[..., 0] <= x).all() and (boxes[..., 2] >= x).all()
    assert (boxes[..., 1] <= y).all() and (boxes[..., 3] >= y).all()
    assert x.max() < padded[1] and y.max() < padded[0]
    assert set(out.strides.tolist()) == {8.0, 16.0, 32.0}
    # locations are cell centres: stride-8 level first, row-major
    assert out.points[:2].tolist() == [[4.0, 4.0], [12.0, 4.0]]


def test_padding_equals_explicit_mean_colour_padding(tiny):
    """Padding inside the model == the caller padding with the mean colour (zero after normalisation)."""
    tiny.eval()
    image = torch.rand(1, 3, 200, 256)
    padded = tiny.pixel_mean.expand(1, 3, 256, 256).clone()
    padded[..., :200, :] = image
    with torch.no_grad():
        a, b = tiny(image), tiny(padded)
    torch.testing.assert_close(a.logits, b.logits)
    torch.testing.assert_close(a.boxes_xyxy, b.boxes_xyxy)


def test_training_mode_aux_branch_and_gradients(tiny):
    tiny.train()
    assert not tiny.backbone.training and tiny.neck.training and tiny.head.training
    out = tiny(torch.rand(1, 3, 128, 128))
    n = _num_locations(128, 128)
    assert out.aux_logits.shape == (1, n, 3) and out.aux_boxes_xyxy.shape == (1, n, 4)
    (out.logits.sum() + out.boxes_xyxy.sum() + out.aux_logits.sum() + out.aux_boxes_xyxy.sum()).backward()
    assert all(p.grad is None for p in tiny.backbone.parameters())  # frozen by default
    groups = tiny.param_groups()
    assert groups["backbone"] == [] and groups["neck"] and groups["head"]
    assert all(p.grad is not None for p in groups["neck"] + groups["head"])
    tiny.zero_grad(set_to_none=True)
    tiny.eval()


def test_unfrozen_backbone_trains(tiny):
    model = Detector(from_preset("tiny", num_classes=3, freeze_backbone=False, aux_head=False))
    model.train()
    assert model.backbone.training
    assert len(model.param_groups()["backbone"]) == len(list(model.backbone.parameters()))
    out = model(torch.rand(1, 3, 128, 128))
    assert out.aux_logits is None
    out.logits.sum().backward()
    assert model.backbone.patch_embed.proj.weight.grad is not None
    model.set_backbone_frozen(True)
    assert model.param_groups()["backbone"] == [] and not model.backbone.training


def test_initial_predictions(tiny):
    """Prior-probability bias: scores start near 0.01; boxes start 2 strides from each side of their point."""
    tiny.eval()
    tiny.head.use_peak_filter = False  # the prior is about the raw scores training starts from
    try:
        with torch.no_grad():
            out = tiny(torch.rand(1, 3, 128, 128))
    finally:
        tiny.head.use_peak_filter = True
    assert out.logits.sigmoid().mean().item() == pytest.approx(0.01, abs=0.005)
    widths = (out.boxes_xyxy[0, :, 2] - out.boxes_xyxy[0, :, 0]) / out.strides
    assert widths.mean().item() == pytest.approx(4.0, rel=0.2)


def _local_maxima(levels: list[np.ndarray]) -> list[np.ndarray]:
    """Independent reference of the 3x3 per-class peak test: `[C, h, w]` -> bool, by comparing with 8 shifts."""
    out = []
    for x in levels:
        padded = np.pad(x, ((0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
        h, w = x.shape[1:]
        shifts = [padded[:, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
        out.append(np.all([x >= s for s in shifts], axis=0))
    return out


def test_peak_filter_keeps_only_local_maxima(tiny):
    """Eval mode: a class score survives only at the 3x3 maximum of its level, as a numpy reference says; the
    surviving values are unchanged, the others get SUPPRESSED_LOGIT; training mode and peak_filter=False do not
    filter."""
    from onedet.model.head import SUPPRESSED_LOGIT

    torch.manual_seed(1)
    with torch.no_grad():  # random classifier weights, so the scores vary from cell to cell
        tiny.head.cls_pred.weight.normal_(0.0, 0.5)
    image = torch.rand(1, 3, 128, 256)  # not square: rows and columns must not be swapped
    tiny.eval()
    try:
        with torch.no_grad():
            filtered = tiny(image).logits[0].numpy()
            tiny.train()
            trained_mode = tiny(image).logits[0].numpy()
            tiny.eval()
            tiny.head.use_peak_filter = False
            raw = tiny(image).logits[0].numpy()
    finally:
        tiny.eval()
        tiny.head.use_peak_filter = True
        with torch.no_grad():
            tiny.head._init_weights()
    levels, start = [], 0
    for stride in tiny.config.strides:
        h, w = 128 // stride, 256 // stride
        levels.append(raw[start : start + h * w].T.reshape(-1, h, w))
        start += h * w
    assert start == len(raw)
    keep = np.concatenate([k.reshape(k.shape[0], -1).T for k in _local_maxima(levels)])
    assert 0.02 < keep.mean() < 0.5  # the test means something: some, not all, locations are peaks
    np.testing.assert_array_equal(filtered[keep], raw[keep])
    assert (filtered[~keep] == SUPPRESSED_LOGIT).all()
    np.testing.assert_array_equal(trained_mode, raw)


def test_bf16_autocast(tiny):
    tiny.eval()
    image = torch.rand(1, 3, 128, 128)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = tiny(image)
    assert out.logits.dtype == out.boxes_xyxy.dtype == torch.float32
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.boxes_xyxy).all()
    with torch.no_grad():
        ref = tiny(image)
    assert (out.boxes_xyxy - ref.boxes_xyxy).abs().max() < 2.0


def test_base_forward_shapes():
    """The base preset (random weights) at a non-square size: the real windowed layout (4 x 3 windows)."""
    model = Detector(from_preset("base", pretrained=None, num_classes=5), init_backbone=False).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 480, 600))  # width padded to 640
    n = _num_locations(480, 640)
    assert out.logits.shape == (1, n, 5) and out.boxes_xyxy.shape == (1, n, 4)
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.boxes_xyxy).all()
