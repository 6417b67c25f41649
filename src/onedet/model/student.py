"""Students for distillation: parsing a student spec, and deriving a shallower student from the teacher itself.

A spec is `NAME[:FIELD=VALUE,...]`. NAME is a preset (`tiny`, `small`, `base`: a new model, its weights from the
preset) or `teacher`, which derives the student from the teacher (`teacher:depth=6`): the teacher's ViT with a
subset of its blocks, and the teacher's own patch and position embeddings, kept blocks, neck and head, so the
student starts as a shortcut of the teacher rather than from scratch (the layer-dropping initialisation of
DistilBERT, Sanh et al. 2019, and of "shrink and fine-tune", Shleifer & Rush 2020). With every block kept it is
the teacher, exactly.

A derived student may also be narrower (`teacher:depth=6,embed_dim=192,neck_channels=96`, the size of `tiny`):
its weights are then the teacher's with every width dimension taken at an even stride, "weight selection" (Xu et
al. 2024, "Initializing Models with Larger Ones": element selection from a larger pretrained model, with the
same indices wherever the same width recurs, which beats random initialisation most on small data). The widths
must divide the teacher's, so the stride is an integer and a concatenation of equal parts (q, k and v; the
neck's taps; the head's branches) keeps the same channels of each part. `num_heads` stays the teacher's, so
each student head is the same strided half (third, ...) of a teacher head's dimensions. No library does this for
a ViT detector's state dict (timm resizes position embeddings, not widths), hence the slicing below.
"""

from __future__ import annotations

import ast
import re
from typing import Any, NamedTuple

import torch
from timm.layers import resample_abs_pos_embed

from onedet.config import PRESETS, ModelConfig
from onedet.errors import OnedetError
from onedet.model.detector import Detector
from onedet.model.distill_loss import check_compatible

TEACHER = "teacher"
# Fields a derived student may change: the widths (embed_dim, neck_channels) select the teacher's weights at a
# stride (`select_width`), the position embedding is resampled to another image size's grid, the rest change no
# weight's shape.
WIDTHS = ("embed_dim", "neck_channels")
DERIVED_OVERRIDES = ("depth", *WIDTHS, "image_size", "window_size", "global_blocks", "topk", "peak_filter", "aux_head")


class StudentSpec(NamedTuple):
    name: str
    """A preset name, or "teacher" for a student derived from the teacher."""
    overrides: dict[str, Any]
    """Model config fields to change (`depth` for a derived student)."""

    @property
    def derived(self) -> bool:
        return self.name == TEACHER


def _parse_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word, e.g. act=gelu


def parse_student(spec: str) -> StudentSpec:
    """`"teacher:depth=6"`, `"small"`, `"tiny:neck_channels=64,taps=(2,5)"` -> StudentSpec; a bad spec raises.

    Fields are split at the commas that start another `NAME=` (so `taps=2,5` is one field).
    """
    name, _, rest = spec.strip().partition(":")
    if name != TEACHER and name not in PRESETS:
        raise OnedetError(f"student {spec!r}: {name!r} is neither 'teacher' nor a preset ({', '.join(PRESETS)})")
    overrides: dict[str, Any] = {}
    for part in re.split(r",(?=\s*[A-Za-z_]\w*\s*=)", rest) if rest.strip() else []:
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or not key.isidentifier() or not value.strip():
            raise OnedetError(f"student {spec!r}: {part!r} is not FIELD=VALUE")
        overrides[key] = _parse_value(value.strip())
    if name == TEACHER:
        unknown = sorted(set(overrides) - set(DERIVED_OVERRIDES))
        if unknown:
            raise OnedetError(
                f"student {spec!r}: a student derived from the teacher takes its weights, so it cannot change "
                f"{unknown}; it may set {', '.join(DERIVED_OVERRIDES)} (or use a preset student)"
            )
        depth = overrides.get("depth")
        if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
            raise OnedetError(f"student {spec!r}: a derived student needs depth=N with N >= 1, e.g. 'teacher:depth=6'")
    return StudentSpec(name, overrides)


def select_blocks(num_blocks: int, taps: tuple[int, ...], global_blocks: tuple[int, ...], depth: int) -> list[int]:
    """The `depth` teacher blocks a derived student keeps, in order.

    The rule: every tapped block and every global block is kept (so the neck sees the same number of taps, and
    the windowed/global pattern survives: each kept global block still follows the windowed blocks kept before
    it), and the other places go to the remaining blocks up to the last tap, evenly spaced among them (position
    `floor((i + 1/2) m / k)` of the `m` candidates for place `i` of `k`). Blocks after the last tap never run
    (the backbone stops there), so they are never kept. E.g. depth 6 of 12 with taps = global = (2, 5, 8, 11)
    keeps (2, 3, 5, 8, 9, 11).
    """
    needed = sorted({*taps, *global_blocks} & set(range(max(taps) + 1)))
    usable = max(taps) + 1
    if not len(needed) <= depth <= usable:
        raise OnedetError(
            f"student depth {depth}: must be between {len(needed)} (the teacher's tapped and global blocks "
            f"{needed}) and {usable} (its blocks up to the last tap, {max(taps)}; of {num_blocks} blocks)"
        )
    candidates = [i for i in range(usable) if i not in needed]
    k = depth - len(needed)
    chosen = [candidates[int((i + 0.5) * len(candidates) / k)] for i in range(k)] if k else []
    return sorted([*needed, *chosen])


def derived_config(teacher: ModelConfig, depth: int, **overrides: Any) -> tuple[ModelConfig, list[int]]:
    """The config of a student derived from `teacher` with `depth` blocks, and the teacher blocks it keeps.

    `taps` and `global_blocks` are renumbered to the kept blocks; `overrides` (DERIVED_OVERRIDES) apply on top. A
    `global_blocks` override (in the student's numbering, e.g. `()` for every block windowed) changes only which
    blocks attend over the whole image: a block's weights are the same either way, so the kept blocks are too.
    """
    kept = select_blocks(teacher.depth, teacher.taps, teacher.global_blocks, depth)
    for name in WIDTHS:
        width, full = overrides.get(name, getattr(teacher, name)), getattr(teacher, name)
        if not isinstance(width, int) or isinstance(width, bool) or width < 1 or full % width:
            raise OnedetError(
                f"student {name}={width!r}: a derived student's width must divide the teacher's ({full}), so its "
                f"weights are the teacher's at an integer stride, e.g. {name}={full // 2}"
            )
    if overrides.get("embed_dim", teacher.embed_dim) % teacher.num_heads:
        raise OnedetError(
            f"student embed_dim={overrides['embed_dim']}: a derived student keeps the teacher's {teacher.num_heads} "
            f"heads, so embed_dim must be a multiple of {teacher.num_heads}"
        )
    position = {block: i for i, block in enumerate(kept)}
    fields = {
        **teacher.to_dict(),
        **overrides,
        "depth": depth,
        "taps": [position[b] for b in teacher.taps],
        "global_blocks": overrides.get("global_blocks", [position[b] for b in teacher.global_blocks if b in position]),
        "pretrained": None,  # the weights come from the teacher
    }
    return ModelConfig.from_dict(fields), kept


def select_width(weight: torch.Tensor, shape: torch.Size, key: str = "weight") -> torch.Tensor:
    """`weight` cut to `shape` by taking every dimension at the stride `teacher size / student size`
    (elements 0, r, 2r, ...); equal sizes are kept whole. A size that does not divide is an OnedetError."""
    index = []
    for full, size in zip(weight.shape, shape):
        if full % size:
            raise OnedetError(
                f"{key}: the student's {tuple(shape)} does not divide the teacher's {tuple(weight.shape)}"
            )
        index.append(slice(None, None, full // size))
    return weight[tuple(index)]  # a view: load_state_dict copies it


def derive_student(teacher: Detector, depth: int, **overrides: Any) -> Detector:
    """A `Detector` with `depth` of the teacher's blocks (`select_blocks`), every weight copied from the teacher:
    patch and position embeddings, pre-norm, the kept blocks, neck and head; at a smaller `embed_dim` or
    `neck_channels`, the teacher's weights taken at a stride (`select_width`). On the teacher's device."""
    cfg, kept = derived_config(teacher.config, depth, **overrides)
    student = Detector(cfg, init_backbone=False)
    source = teacher.state_dict()
    renumber = {f"backbone.blocks.{old}.": f"backbone.blocks.{new}." for new, old in enumerate(kept)}
    state = {}
    for key, value in source.items():
        if key.startswith("backbone.blocks."):
            prefix = ".".join(key.split(".")[:3]) + "."
            if prefix not in renumber:
                continue  # a dropped block
            key = renumber[prefix] + key[len(prefix) :]
        state[key] = value
    if not cfg.aux_head:
        state = {k: v for k, v in state.items() if not k.startswith("head.aux_")}
    if student.backbone.grid_size != teacher.backbone.grid_size:  # another image_size: the same embedding resampled
        state["backbone.pos_embed"] = resample_abs_pos_embed(
            state["backbone.pos_embed"],
            new_size=student.backbone.grid_size,
            old_size=teacher.backbone.grid_size,
            num_prefix_tokens=1,
        )
    target = student.state_dict()
    state = {k: v if v.shape == target[k].shape else select_width(v, target[k].shape, k) for k, v in state.items()}
    student.load_state_dict(state, strict=True)
    student.set_backbone_frozen(teacher.backbone.frozen)
    student.train(teacher.training)
    return student.to(next(teacher.parameters()).device)


def student_config(spec: StudentSpec, teacher: ModelConfig, **fields: Any) -> ModelConfig:
    """The student's ModelConfig: derived from the teacher, or the preset with the teacher's classes and image size.

    `fields` (e.g. `pretrained`, `freeze_backbone`) apply last. The student must predict at the teacher's strides
    (the dense targets are the teacher's outputs location by location): else an OnedetError.
    """
    if spec.derived:
        overrides = {k: v for k, v in spec.overrides.items() if k != "depth"}
        cfg, _ = derived_config(teacher, spec.overrides["depth"], **overrides)
        cfg = ModelConfig.from_dict({**cfg.to_dict(), **fields})
    else:
        base = {"num_classes": teacher.num_classes, "image_size": teacher.image_size, **fields}
        cfg = ModelConfig.from_preset(spec.name, **{**base, **spec.overrides})
    check_compatible(cfg, teacher)
    return cfg


@torch.no_grad()
def build_student(spec: StudentSpec, teacher: Detector, **fields: Any) -> Detector:
    """The student of `spec` for `teacher`: derived (weights copied) or a preset (weights of its `pretrained`)."""
    from onedet.model.detector import build_detector

    cfg = student_config(spec, teacher.config, **fields)
    if spec.derived:
        overrides = {k: v for k, v in spec.overrides.items() if k != "depth"}
        student = derive_student(teacher, cfg.depth, **overrides)
        student.config = cfg  # the same architecture; `fields` may change e.g. freeze_backbone
        student.set_backbone_frozen(cfg.freeze_backbone)
        return student
    return build_detector(cfg).to(next(teacher.parameters()).device)
