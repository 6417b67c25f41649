"""The windowed ViT backbone: equality with timm / open_clip given the same weights, windowing, freezing, loading."""

from __future__ import annotations

import pytest
import timm
import torch

from onedet.errors import OnedetError
from onedet.model.backbone import ViTBackbone, load_backbone_weights

CLIP_B16 = "vit_base_patch16_clip_quickgelu_224.openai"


def _clip_b16(image_size: int, window_size: int, taps=(11,), global_blocks=()) -> ViTBackbone:
    return ViTBackbone(
        image_size=image_size,
        patch_size=16,
        embed_dim=768,
        depth=12,
        num_heads=12,
        act="quick_gelu",
        window_size=window_size,
        global_blocks=global_blocks,
        taps=taps,
        init_weights=False,  # loaded right after; timm's init of 86M parameters takes seconds
    )


def _timm_maps(model, x: torch.Tensor, taps) -> list[torch.Tensor]:
    with torch.no_grad():
        return model.forward_intermediates(
            x, indices=list(taps), norm=False, output_fmt="NCHW", intermediates_only=True
        )


@pytest.fixture(scope="module")
def timm_clip(tmp_path_factory):
    """timm's CLIP ViT-B/16 (QuickGELU) with random weights, and the same weights saved as a .safetensors file."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model(CLIP_B16, pretrained=False, weight_init="skip").eval()  # torch's default init: fast
    torch.nn.init.normal_(model.pos_embed, std=0.02)  # left empty by "skip"
    torch.nn.init.normal_(model.cls_token, std=0.02)
    path = tmp_path_factory.mktemp("weights") / "clip_b16.safetensors"
    save_file(model.state_dict(), str(path))
    return model, path


@pytest.fixture(scope="module")
def clip_224(timm_clip):
    """onedet's backbone at 224 px with one window covering the grid, loaded from the timm file."""
    backbone = _clip_b16(224, window_size=14, taps=(3, 11), global_blocks=(5,))
    load_backbone_weights(backbone, timm_clip[1])
    return backbone


def test_timm_file_gives_timm_features(timm_clip, clip_224):
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ours = clip_224(x)
    for a, b in zip(ours, _timm_maps(timm_clip[0], x, (3, 11))):
        assert a.shape == b.shape == (2, 768, 14, 14)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_pos_embed_resized_once_or_on_the_fly(timm_clip, clip_224):
    ref, path = timm_clip
    dynamic = timm.create_model(CLIP_B16, pretrained=False, dynamic_img_size=True, weight_init="skip").eval()
    dynamic.load_state_dict(ref.state_dict())  # timm resizes the 14x14 pos-embed to the input grid each call
    x = torch.randn(1, 3, 320, 320)
    expected = _timm_maps(dynamic, x, (11,))[0]
    # configured for 320: resized once when loading, stored as the parameter
    backbone = _clip_b16(320, window_size=20)
    load_backbone_weights(backbone, path)
    assert backbone.pos_embed.shape == (1, 1 + 20 * 20, 768)
    # configured for 224 but fed 320 px: resized on the fly (one 20-patch window covers the new grid)
    clip_224.window_size = 20
    try:
        with torch.no_grad():
            torch.testing.assert_close(backbone(x)[0], expected, rtol=0, atol=1e-5)
            torch.testing.assert_close(clip_224(x)[1], expected, rtol=0, atol=1e-5)
    finally:
        clip_224.window_size = 14


@pytest.mark.slow
def test_open_clip_file_gives_open_clip_features(tmp_path):
    open_clip = pytest.importorskip("open_clip")
    torch.manual_seed(1)
    clip = open_clip.create_model("ViT-B-16", pretrained=None, quick_gelu=True).eval()
    path = tmp_path / "open_clip_b16.pt"
    # the real open_clip layout: visual.* plus (a few of, to keep the file small) the text tower's keys
    text_keys = ("logit_scale", "text_projection", "positional_embedding", "ln_final.weight", "ln_final.bias")
    torch.save({k: v for k, v in clip.state_dict().items() if k.startswith("visual.") or k in text_keys}, path)
    backbone = _clip_b16(224, window_size=14, taps=(4, 11))
    load_backbone_weights(backbone, path)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        ours = backbone(x)
        theirs = clip.visual.forward_intermediates(x, indices=[4, 11], intermediates_only=True, output_fmt="NCHW")
    for a, b in zip(ours, theirs["image_intermediates"]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def _tiny(window_size: int, global_blocks=(), taps=(1, 3), image_size: int = 128) -> ViTBackbone:
    return ViTBackbone(
        image_size=image_size,
        patch_size=16,
        embed_dim=64,
        depth=4,
        num_heads=2,
        act="gelu",
        pre_norm=False,
        norm_eps=1e-6,
        window_size=window_size,
        global_blocks=global_blocks,
        taps=taps,
    )


def test_one_window_equals_stock_global_vit():
    """Windowed layout with a window covering the grid == timm's stock ViT (global attention) on the same weights."""
    torch.manual_seed(0)
    ours = _tiny(window_size=8, global_blocks=(1,))
    ref = timm.create_model("vit_tiny_patch16_224", img_size=128, embed_dim=64, depth=4, num_heads=2, num_classes=0)
    missing, unexpected = ref.load_state_dict(ours.state_dict(), strict=False)
    assert unexpected == [] and set(missing) == {"norm.weight", "norm.bias"}
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        for a, b in zip(ours(x), _timm_maps(ref.eval(), x, (1, 3))):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_windows_are_independent_vits_on_their_crops():
    """With only windowed blocks, each window's map == the ViT run on that window's tokens alone (own cls copy)."""
    torch.manual_seed(0)
    backbone = _tiny(window_size=4, taps=(3,))
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        ours = backbone(x)[0]  # (1, C, 8, 8)
        tokens = backbone.patch_embed.proj(x).flatten(2).transpose(1, 2) + backbone.pos_embed[:, 1:]
        grid = tokens.reshape(1, 8, 8, 64)
        cls = backbone.cls_token + backbone.pos_embed[:, :1]
        for wy in range(2):
            for wx in range(2):
                crop = grid[:, wy * 4 : wy * 4 + 4, wx * 4 : wx * 4 + 4].reshape(1, 16, 64)
                out = backbone.blocks(backbone.norm_pre(torch.cat([cls, crop], dim=1)))[:, 1:]
                expected = out.reshape(1, 4, 4, 64).permute(0, 3, 1, 2)
                torch.testing.assert_close(ours[..., wy * 4 : wy * 4 + 4, wx * 4 : wx * 4 + 4], expected)
    # a global block mixes windows: the output changes when another window's pixels change
    backbone = _tiny(window_size=4, global_blocks=(0,), taps=(3,))
    y = x.clone()
    y[..., 64:, 64:] = 0  # only the bottom-right window
    with torch.no_grad():
        a, b = backbone(x)[0], backbone(y)[0]
    assert not torch.allclose(a[..., :4, :4], b[..., :4, :4])


def test_frozen_by_default_and_stays_eval():
    backbone = _tiny(window_size=8)
    assert not any(p.requires_grad for p in backbone.parameters())
    backbone.train()
    assert not backbone.training and not any(m.training for m in backbone.modules())
    backbone.set_frozen(False)
    backbone.train()
    assert backbone.training and all(p.requires_grad for p in backbone.parameters())


def test_size_not_multiple_of_window_is_a_clear_error():
    with pytest.raises(OnedetError, match="multiple of 128 pixels"):
        _tiny(window_size=8)(torch.randn(1, 3, 96, 128))


def test_bad_files_are_clear_errors(tmp_path):
    backbone = _tiny(window_size=8)
    with pytest.raises(OnedetError, match="not found"):
        load_backbone_weights(backbone, tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(OnedetError, match=r"junk\.pt: cannot read weights"):
        load_backbone_weights(backbone, junk)
    other = tmp_path / "other.pt"
    torch.save(_tiny(window_size=8, image_size=128).state_dict() | {"extra.weight": torch.zeros(1)}, other)
    with pytest.raises(OnedetError, match=r"unexpected: extra\.weight"):
        load_backbone_weights(backbone, other)


def test_offline_hub_fails_fast_with_a_clear_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    backbone = _tiny(window_size=8)
    with pytest.raises(OnedetError, match=r"could not download vit_tiny_patch16_224.* pretrained=PATH"):
        load_backbone_weights(backbone, "hub", hub_name="vit_tiny_patch16_224.augreg_in21k")


class _Visual(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_archive_is_read(tmp_path):
    """OpenAI's original CLIP files are TorchScript archives: their state_dict is read (no pickle involved)."""
    from onedet.model.backbone import read_state_dict

    module = torch.jit.script(_Visual())
    torch.jit.save(module, tmp_path / "ViT-B-16.pt")
    state = read_state_dict(tmp_path / "ViT-B-16.pt")
    assert set(state) == {"proj.weight", "proj.bias"}
    torch.testing.assert_close(state["proj.weight"], module.proj.weight)


def test_grad_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    backbone = _tiny(window_size=4, global_blocks=(1,), taps=(1, 3))
    backbone.set_frozen(False)
    x = torch.randn(1, 3, 128, 128)
    grads = []
    for enable in (False, True):
        backbone.set_grad_checkpointing(enable)
        backbone.zero_grad()
        sum(m.square().mean() for m in backbone(x)).backward()
        grads.append(backbone.blocks[0].attn.qkv.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])
