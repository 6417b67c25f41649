"""CLIP ViT backbone with window-major windowed attention, and its weight loading (timm / open_clip layouts).

The module *is* a timm `VisionTransformer` (same module names, so a timm state_dict loads directly and peft can
target `blocks.N.attn.qkv`); only `forward` differs:

- The position embedding is resized to the patch grid of the configured image size once, when the weights are
  loaded, and stored in the `pos_embed` parameter. Only an input of another size resizes it on the fly (and
  always while exporting, so the exported graph has no shape-specialised branch; same-size bicubic is exact).
- Window-major windowed attention (LW-DETR / rf-detr): after patch embedding and position embedding the windows
  move into the batch dimension once, `(B, H*W, C) -> (B*nW, 1 + h*w, C)`, each window with its own copy of the
  class token. Windowed blocks are ordinary timm `Block`s; a global block is a `view` to `(B, nW*(1 + h*w), C)`
  and back, since attention does not care about token order once positions are embedded. With one window this
  is exactly timm's global ViT. Only tapped outputs are un-windowed into NCHW stride-`patch_size` maps.
- Frozen by default: no gradients, and it stays in eval mode when a parent calls `.train()`.
"""

from __future__ import annotations

import logging
import socket
import zipfile
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import cast
from unittest import mock
from urllib.parse import urlparse

import torch
from timm.layers import LayerNorm, resample_abs_pos_embed
from timm.layers.helpers import is_exporting
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from torch import nn
from torch.fx.experimental.symbolic_shapes import is_concrete_int
from torch.utils.checkpoint import checkpoint

from onedet.errors import OnedetError

_log = logging.getLogger(__name__)

# Keys of a timm ViT checkpoint that the backbone does not use (final norm and classifier).
_UNUSED_PREFIXES = ("norm.", "fc_norm.", "head.", "head_drop.", "attn_pool.")


class ViTBackbone(VisionTransformer):
    """A timm ViT whose `forward(x) -> list of [B, C, H/p, W/p]` runs windowed attention and returns tapped maps.

    `x` is normalised `[B, 3, H, W]` with H and W multiples of `patch_size * window_size`.
    """

    def __init__(
        self,
        *,
        image_size: int,
        patch_size: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        act: str = "quick_gelu",
        pre_norm: bool = True,
        norm_eps: float = 1e-5,
        window_size: int,
        global_blocks: Sequence[int] = (),
        taps: Sequence[int],
        frozen: bool = True,
        init_weights: bool = True,
    ) -> None:
        """`init_weights=False` skips timm's (slow) weight init, for weights that are loaded right after."""
        super().__init__(
            img_size=image_size,
            patch_size=patch_size,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=True,
            class_token=True,
            global_pool="token",
            num_classes=0,
            pre_norm=pre_norm,
            norm_layer=partial(LayerNorm, eps=norm_eps),
            act_layer=act,
            weight_init="" if init_weights else "skip",
        )
        assert self.pos_embed is not None and self.cls_token is not None  # class_token=True, absolute pos_embed
        if not init_weights:  # 'skip' leaves these two as torch.empty: make them finite, cheaply
            nn.init.normal_(self.pos_embed, std=0.02)
            nn.init.normal_(self.cls_token, std=1e-6)
        # The final norm and classifier are never used: dropping them keeps DDP's unused-parameter check quiet.
        self.norm = nn.Identity()
        self.window_size = window_size
        self.global_blocks = frozenset(global_blocks)
        self.taps = tuple(sorted(taps))
        self.frozen = False
        self.set_frozen(frozen)

    def set_frozen(self, frozen: bool) -> None:
        """Freeze (no gradients, eval mode kept) or unfreeze the backbone."""
        self.frozen = frozen
        self.requires_grad_(not frozen)
        self.train(self.training)

    def train(self, mode: bool = True) -> ViTBackbone:
        # A frozen backbone stays in eval mode whatever the parent asks (no dropout/drop-path in the features).
        return super().train(mode and not self.frozen)

    @property
    def grid_size(self) -> tuple[int, int]:
        """Patch grid of the configured image size (the grid `pos_embed` is stored at)."""
        return tuple(self.patch_embed.grid_size)

    def _grid_pos_embed(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """Position embedding `(1, 1 + grid_h * grid_w, C)` for a grid, resized only when the grid differs.

        While exporting with a symbolic grid (a bare Detector with dynamic H and W) the resize is always in the
        graph; with a static grid (the end-to-end export feeds the letterboxed S x S input) it is left out, so that
        graph has no Resize (TensorRT-safe) and no per-call interpolation.
        """
        static = is_concrete_int(grid_h) and is_concrete_int(grid_w)
        if (is_exporting() and not static) or (grid_h, grid_w) != self.grid_size:
            return resample_abs_pos_embed(
                self.pos_embed, new_size=(grid_h, grid_w), old_size=self.grid_size, num_prefix_tokens=1
            )
        return cast(torch.Tensor, self.pos_embed)  # never None (asserted in __init__)

    # Returns the tapped maps, not timm's pooled features, and takes no attention mask: a deliberate override.
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # type: ignore[override]
        """Normalised images `[B, 3, H, W]` -> one `[B, C, H/p, W/p]` map per tap, in tap order."""
        x = self.patch_embed.proj(x)  # (B, C, gh, gw); timm's PatchEmbed would assert the configured size
        batch, dim, grid_h, grid_w = x.shape
        ws = self.window_size
        if grid_h % ws or grid_w % ws:
            raise OnedetError(
                f"input of {grid_h}x{grid_w} patches is not a multiple of the {ws}-patch attention window; "
                f"pad the image to a multiple of {ws * self.patch_embed.patch_size[0]} pixels (Detector does)"
            )
        num_h, num_w = grid_h // ws, grid_w // ws
        num_windows = num_h * num_w
        pos = self._grid_pos_embed(grid_h, grid_w)
        x = x.flatten(2).transpose(1, 2) + pos[:, 1:]  # (B, gh*gw, C)
        # window-major: (B, nh, ws, nw, ws, C) -> (B*nW, ws*ws, C), windows in row-major order
        x = x.reshape(batch, num_h, ws, num_w, ws, dim).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, dim)
        cls = (cast(torch.Tensor, self.cls_token) + pos[:, :1]).expand(x.shape[0], -1, -1)
        x = self.norm_pre(torch.cat([cls, x], dim=1))  # (B*nW, 1 + ws*ws, C)
        tokens = x.shape[1]

        maps = []
        # timm's `set_grad_checkpointing()`: recompute each block in the backward pass (LoRA / full fine-tuning)
        checkpointing = self.grad_checkpointing and torch.is_grad_enabled()
        for i, block in enumerate(self.blocks):
            run = partial(checkpoint, block, use_reentrant=False) if checkpointing else block
            if i in self.global_blocks and num_windows > 1:
                x = run(x.reshape(batch, num_windows * tokens, dim)).reshape(batch * num_windows, tokens, dim)
            else:
                x = run(x)
            if i in self.taps:
                m = x[:, 1:].reshape(batch, num_h, num_w, ws, ws, dim).permute(0, 5, 1, 3, 2, 4)
                maps.append(m.reshape(batch, dim, grid_h, grid_w))  # (B, C, gh, gw)
            if i == self.taps[-1]:
                break  # blocks after the last tap do not change the output
        return maps


# --- weights -------------------------------------------------------------------------------------------------


def _torch_load(path: Path) -> object:
    # OpenAI's original CLIP files (e.g. ViT-B-16.pt) are TorchScript archives (a zip with code/), not pickles;
    # TorchScript runs no pickled Python, and torch.load would dispatch to it anyway, with a warning.
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            torchscript = any("/code/" in n for n in archive.namelist())
        if torchscript:
            return torch.jit.load(str(path), map_location="cpu").state_dict()
    return torch.load(path, map_location="cpu", weights_only=True)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a `.safetensors` / `.pt` / `.pth` / `.bin` file (nothing arbitrary is unpickled).

    Also reads OpenAI's TorchScript CLIP archives (their state_dict; TorchScript runs no pickled Python).
    """
    if not path.is_file():
        raise OnedetError(f"{path}: pretrained weights file not found")
    state: object
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = _torch_load(path)
    except Exception as e:  # corrupt file, pickled objects, wrong format: all the same to the user
        raise OnedetError(f"{path}: cannot read weights ({type(e).__name__}: {e})") from e
    if isinstance(state, nn.Module):
        state = state.state_dict()
    for key in ("state_dict", "model"):  # common checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise OnedetError(f"{path}: not a state_dict of tensors")
    return state


def to_timm_layout(state: dict[str, torch.Tensor], backbone: ViTBackbone) -> dict[str, torch.Tensor]:
    """A timm or open_clip (`visual.*`) state_dict in the backbone's timm layout, `pos_embed` resized to its grid.

    timm's own `checkpoint_filter_fn` does both (it calls `_convert_openai_clip` for open_clip/OpenAI keys).
    """
    state = checkpoint_filter_fn(state, backbone)
    return {k: v for k, v in state.items() if not k.startswith(_UNUSED_PREFIXES)}


def _hub_reachable(timeout: float = 5.0) -> bool:
    """A quick TCP connect to the Hugging Face endpoint: huggingface_hub's own retries take over a minute."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
    except OSError:
        return False
    return True


def _download(hub_name: str, backbone: ViTBackbone) -> dict[str, torch.Tensor]:
    import timm
    from huggingface_hub import constants

    # Unreachable hub: look in the local cache only (offline mode), which fails at once when the file is absent.
    offline = constants.HF_HUB_OFFLINE or not _hub_reachable()
    try:
        with mock.patch.object(constants, "HF_HUB_OFFLINE", offline):
            model = timm.create_model(hub_name, pretrained=True, num_classes=0, img_size=backbone.patch_embed.img_size)
    except Exception as e:  # offline (LocalEntryNotFoundError, OSError, ...) or an unknown name
        raise OnedetError(
            f"could not download {hub_name} ({type(e).__name__}: {e}); "
            "pass a local file with pretrained=PATH (timm or open_clip layout)"
        ) from e
    return model.state_dict()


def load_backbone_weights(backbone: ViTBackbone, pretrained: str | Path | None, hub_name: str = "") -> None:
    """Load `pretrained` into `backbone`: "hub" (timm's `hub_name`), a local file, or None (keep random init).

    A file may be in timm layout or open_clip layout (a whole CLIP model: only `visual.*` is used).
    """
    if pretrained is None:
        return
    if str(pretrained) == "hub":
        source = hub_name
        state = _download(hub_name, backbone)
    else:
        source = str(pretrained)
        state = read_state_dict(Path(pretrained))
    try:
        state = to_timm_layout(state, backbone)
        own = backbone.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        wrong = [
            f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}"
            for k in own
            if k in state and state[k].shape != own[k].shape
        ]
    except Exception as e:
        raise OnedetError(f"{source}: cannot convert the weights to the backbone ({type(e).__name__}: {e})") from e
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{name}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
            for name, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if keys
        )
        raise OnedetError(f"{source}: weights do not fit the configured backbone ({detail})")
    backbone.load_state_dict(state, strict=True)
    _log.info("loaded backbone weights from %s", source)
