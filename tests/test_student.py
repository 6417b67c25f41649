"""Students: the spec grammar, the block selection, and a student derived from the teacher's own weights."""

from __future__ import annotations

import pytest
import torch

from onedet.config import ModelConfig
from onedet.errors import OnedetError
from onedet.model.detector import Detector, build_detector
from onedet.model.student import derive_student, parse_student, select_blocks, student_config


@pytest.fixture(scope="module")
def teacher() -> Detector:
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset("tiny", num_classes=3, image_size=128, freeze_backbone=False)
    return build_detector(cfg).eval()


def test_parse_student_specs() -> None:
    assert parse_student("small") == ("small", {})
    assert parse_student("teacher:depth=6") == ("teacher", {"depth": 6})
    spec = parse_student("tiny:neck_channels=64,taps=2,5,act=gelu")
    assert spec == ("tiny", {"neck_channels": 64, "taps": (2, 5), "act": "gelu"})
    assert parse_student("teacher:depth=4,window_size=4").derived


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("huge", "neither 'teacher' nor a preset"),
        ("teacher", "needs depth=N"),
        ("teacher:depth=0", "needs depth=N"),
        ("teacher:depth=six", "needs depth=N"),
        ("teacher:depth=4,num_heads=6", "cannot change ['num_heads']"),
        ("tiny:depth", "is not FIELD=VALUE"),
    ],
)
def test_bad_specs_are_clear_errors(spec: str, message: str) -> None:
    with pytest.raises(OnedetError, match=f"student {spec!r}.*{message}".replace("[", r"\[").replace("]", r"\]")):
        parse_student(spec)


def test_block_selection_keeps_taps_and_global_blocks_and_spaces_the_rest() -> None:
    base = (2, 5, 8, 11)
    assert select_blocks(12, base, base, 6) == [2, 3, 5, 8, 9, 11]
    assert select_blocks(12, base, base, 4) == [2, 5, 8, 11]
    assert select_blocks(12, base, base, 12) == list(range(12))
    assert select_blocks(12, (3, 7), (3,), 5) == [1, 3, 4, 6, 7]  # nothing after the last tap
    with pytest.raises(OnedetError, match=r"between 4 .* and 12"):
        select_blocks(12, base, base, 3)
    with pytest.raises(OnedetError, match=r"between 2 .* and 8"):
        select_blocks(12, (3, 7), (3,), 9)  # blocks 8..11 never run


def test_full_depth_student_is_the_teacher_exactly(teacher: Detector) -> None:
    student = derive_student(teacher, teacher.config.depth).eval()
    assert student.config == teacher.config
    images = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        expected, got = teacher(images), student(images)
    assert torch.equal(got.logits, expected.logits)
    assert torch.equal(got.boxes_xyxy, expected.boxes_xyxy)


def test_shallow_student_copies_the_kept_blocks(teacher: Detector) -> None:
    # tiny: 6 blocks, global (2, 5), taps (3, 5); depth 4 keeps the three of those and one evenly spaced other
    student = derive_student(teacher, 4)
    kept = [1, 2, 3, 5]
    assert select_blocks(6, (3, 5), (2, 5), 4) == kept
    assert len(student.backbone.blocks) == 4
    assert student.config.taps == (2, 3) and student.config.global_blocks == (1, 3)
    assert student.backbone.taps == (2, 3) and student.backbone.global_blocks == {1, 3}
    for new, old in enumerate(kept):
        for (name, value), (_, source) in zip(
            student.backbone.blocks[new].state_dict().items(), teacher.backbone.blocks[old].state_dict().items()
        ):
            assert torch.equal(value, source), (new, old, name)
    ours, theirs = student.state_dict(), teacher.state_dict()
    shared = [k for k in ours if not k.startswith("backbone.blocks.")]
    assert any(k.startswith("neck.") for k in shared) and any(k.startswith("head.aux_") for k in shared)
    for key in shared:
        assert torch.equal(ours[key], theirs[key]), key
    assert student.backbone.frozen == teacher.backbone.frozen


def test_a_derived_student_may_window_the_teachers_global_blocks(teacher: Detector) -> None:
    """`global_blocks=()`: the same kept blocks and weights as the default depth-4 student, every block windowed, so
    its outputs differ; at full depth with the teacher's own global blocks it is the teacher again."""
    default, windowed = derive_student(teacher, 4), derive_student(teacher, 4, global_blocks=())
    assert windowed.config.global_blocks == () and windowed.backbone.global_blocks == set()
    assert default.config.global_blocks == (1, 3)
    ours, theirs = windowed.state_dict(), default.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    images = torch.rand(1, 3, 256, 256)  # 16 x 16 patches: four 8 x 8 windows (at 128 px one window is the image)
    with torch.no_grad():
        assert not torch.allclose(windowed.eval()(images).boxes_xyxy, default.eval()(images).boxes_xyxy)
    assert parse_student("teacher:depth=6,global_blocks=()").overrides == {"depth": 6, "global_blocks": ()}
    same = derive_student(teacher, teacher.config.depth, global_blocks=teacher.config.global_blocks)
    assert same.config == teacher.config
    with pytest.raises(OnedetError, match=r"block indices \[7\] in global_blocks/taps are outside 0..3"):
        derive_student(teacher, 4, global_blocks=(7,))


def test_narrow_student_takes_the_teachers_weights_at_a_stride(teacher: Detector) -> None:
    # tiny: embed_dim 192 in 3 heads of 64, neck 96; half of each -> every second channel, the same ones everywhere
    student = derive_student(teacher, 4, embed_dim=96, neck_channels=48)
    assert student.config.embed_dim == 96 and student.config.num_heads == 3 and student.config.neck_channels == 48
    ours, theirs = student.state_dict(), teacher.state_dict()
    block, source = "backbone.blocks.0.", "backbone.blocks.1."  # kept [1, 2, 3, 5], as above
    assert torch.equal(ours[block + "attn.qkv.weight"], theirs[source + "attn.qkv.weight"][::2, ::2])
    assert torch.equal(ours[block + "mlp.fc2.weight"], theirs[source + "mlp.fc2.weight"][::2, ::2])
    # q, k and v each keep the same channels of their part, so each student head is half of a teacher head
    t_qkv, s_qkv = theirs[source + "attn.qkv.weight"], ours[block + "attn.qkv.weight"]
    for part in range(3):
        assert torch.equal(s_qkv[part * 96 : (part + 1) * 96], t_qkv[part * 192 : (part + 1) * 192 : 2, ::2])
    assert torch.equal(ours["backbone.pos_embed"], theirs["backbone.pos_embed"][..., ::2])
    assert torch.equal(ours["backbone.patch_embed.proj.weight"], theirs["backbone.patch_embed.proj.weight"][::2])
    # the fuse conv's input is the two taps side by side: the same channels of each tap
    fuse = theirs["neck.fuse.0.weight"]
    assert torch.equal(ours["neck.fuse.0.weight"][:, 96:], fuse[::2, 192::2])
    assert torch.equal(ours["head.cls_pred.weight"], theirs["head.cls_pred.weight"][:, ::2])
    assert torch.equal(ours["head.scales"], theirs["head.scales"])
    out = student.eval()(torch.rand(1, 3, 128, 128))
    assert out.logits.shape == teacher(torch.rand(1, 3, 128, 128)).logits.shape


@pytest.mark.parametrize(
    ("widths", "message"),
    [
        ({"embed_dim": 128}, r"embed_dim=128: .* must divide the teacher's \(192\)"),
        ({"neck_channels": 40}, r"neck_channels=40: .* must divide the teacher's \(96\)"),
        ({"embed_dim": 64}, r"keeps the teacher's 3 heads, so embed_dim must be a multiple of 3"),
    ],
)
def test_a_narrow_students_widths_must_divide_the_teachers(teacher: Detector, widths: dict, message: str) -> None:
    with pytest.raises(OnedetError, match=message):
        derive_student(teacher, 4, **widths)


def test_derived_student_at_another_image_size_resamples_the_position_embedding(teacher: Detector) -> None:
    student = derive_student(teacher, 4, image_size=256)
    assert student.backbone.grid_size == (16, 16)
    assert student(torch.rand(1, 3, 256, 256)).logits.shape[-1] == 3
    narrow = derive_student(teacher, 4, image_size=256, embed_dim=96)  # resampled, then taken at a stride
    assert narrow.backbone.pos_embed.shape == (1, 257, 96)


def test_preset_student_takes_the_teachers_classes_and_must_keep_its_strides(teacher: Detector) -> None:
    cfg = student_config(parse_student("tiny:depth=2,taps=(0,1),global_blocks=(1,)"), teacher.config)
    assert cfg.num_classes == 3 and cfg.image_size == 128 and cfg.depth == 2
    with pytest.raises(OnedetError, match=r"strides \[16, 32\], the teacher at \[8, 16, 32\]"):
        student_config(parse_student("tiny:strides=(16,32)"), teacher.config)
