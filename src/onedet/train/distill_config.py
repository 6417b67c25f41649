"""`DistillConfig`: the training configuration of `onedet distill`, a TrainConfig with a teacher and a student.

Torch-free like `onedet.train.config`, so `onedet distill --help` stays instant; the trainer is
`onedet.train.distill`. The signal weights are fields, so each signal's contribution is measured by setting its
weight to 0 (the terms themselves: `onedet.model.distill_loss`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from onedet.errors import OnedetError
from onedet.train.config import TrainConfig

PSEUDO_THRESHOLD_FALLBACK = 0.4
"""The pseudo-label threshold of a class the val split has no boxes of (with `kd_pseudo_threshold` none), where
F1 cannot choose one: `kd_pseudo_threshold`'s default. (A class the teacher never finds on val gets no
pseudo-labels: no score of its is good enough. Prediction, which must show something, takes 0.3 for both.)"""


@dataclass(kw_only=True)
class DistillConfig(TrainConfig):
    teacher: Path
    """The teacher's run folder (or checkpoint folder); its `best` weights teach, frozen."""
    student: str
    """The student: a preset (`tiny`, `small`, `base`), optionally `PRESET:FIELD=VALUE,...`, or a student derived
    from the teacher, `teacher:depth=N[,FIELD=VALUE...]` (its weights copied from the teacher's blocks; with a
    smaller `embed_dim` or `neck_channels`, which must divide the teacher's, taken from them at a stride;
    `global_blocks=()` makes every block windowed)."""
    unlabeled: Path | None = None
    """Images without boxes: a store split (or a store with a `train` split), or a folder of images, which is
    prepared once into `out/unlabeled_store` at the train split's size. Each step adds a batch of them, which learn
    from the teacher only."""
    unlabeled_batch_size: int | None = None
    """Unlabelled images per step (default: `batch_size`)."""
    label_fraction: float = 1.0
    """Use the boxes of only this fraction of the train split's images (a subset seeded by `seed`); the others learn
    from the teacher alone, as unlabelled images do (to measure what distillation gives with few labels)."""
    finetune: Literal["frozen", "lora", "full"] = "full"
    """What trains in the student: everything (default: a derived student's backbone must adapt to its missing
    blocks), LoRA adapters on the backbone, or the neck and head only (frozen backbone)."""
    gt_weight: float = 1.0
    """Weight of the ground-truth terms (on labelled images), a factor on the model's own loss weights."""
    kd_cls_weight: float = 2.0
    """Weight of the one-to-one branch's soft-target (quality focal) loss against the teacher's scores."""
    kd_aux_cls_weight: float = 2.0
    """Weight of the same loss on the auxiliary one-to-many branch."""
    kd_box_l1_weight: float = 5.0
    """Weight of the L1 loss to the teacher's boxes where the teacher is confident."""
    kd_box_giou_weight: float = 2.0
    """Weight of the GIoU loss to the teacher's boxes where the teacher is confident."""
    kd_feat_weight: float = 1.0
    """Weight of the feature mimicking loss (projected pyramid maps, weighted by the teacher's confidence)."""
    kd_assign: bool = False
    """Label assignment distillation: match the ground truth (and pseudo-labels) to the teacher's predictions, not
    the student's, so the student's one positive per object is where the teacher fires (and its score targets
    peak)."""
    kd_box_threshold: float = 0.3
    """Teacher top score above which a location's box is distilled."""
    kd_pseudo_weight: float = 1.0
    """Weight of the pseudo-label terms: the images without labels learn the teacher's detections as ground truth
    (a factor on the model's own loss weights, as `gt_weight` is)."""
    kd_pseudo_threshold: float | None = 0.4
    """Teacher score from which a detection is a pseudo-label; `none`: one per class, chosen when the run starts as
    the score at which the teacher's F1 (IoU 0.5) on the val split is best (`PSEUDO_THRESHOLD_FALLBACK` for a class
    without boxes there, none of a class the teacher never finds there)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        # From JSON (a resumed run's train_config.json) paths arrive as strings.
        self.teacher = Path(self.teacher)
        self.unlabeled = None if self.unlabeled is None else Path(self.unlabeled)
        if not 0 < self.label_fraction <= 1:
            raise OnedetError(f"label_fraction must be in (0, 1], not {self.label_fraction}")
        for name in ("kd_box_threshold", "kd_pseudo_threshold"):
            if getattr(self, name) is not None and not 0 <= getattr(self, name) <= 1:
                raise OnedetError(f"{name} is a score, in [0, 1], not {getattr(self, name)}")
        if self.mixup and self.label_fraction < 1:
            # the subset is marked per image after the loader: a mixed image would take an unlabelled one's boxes
            raise OnedetError("--mixup mixes labelled and unlabelled images: it does not apply with --label-fraction")
        if self.mosaic and self.label_fraction < 1:
            raise OnedetError("--mosaic tiles labelled and unlabelled images: it does not apply with --label-fraction")

    def loss_weights(self, model_weights: Mapping[str, float] | None = None) -> dict[str, float]:
        """The distillation terms' weights, and `pseudo_X`'s (`model_weights[X] * kd_pseudo_weight`, `X` a ground-truth
        term) when `model_weights` is given. The ground-truth terms keep the model's weights, times `gt_weight`."""
        weights = {
            "kd_cls": self.kd_cls_weight,
            "kd_aux_cls": self.kd_aux_cls_weight,
            "kd_box_l1": self.kd_box_l1_weight,
            "kd_box_giou": self.kd_box_giou_weight,
            "kd_feat": self.kd_feat_weight,
        }
        for name, value in (model_weights or {}).items():
            weights[f"pseudo_{name}"] = value * self.kd_pseudo_weight
        return weights

    def pseudo_labels(self) -> bool:
        """Whether the pseudo-label terms apply: their weight is not 0 and some images have no labels."""
        return self.kd_pseudo_weight > 0 and (self.unlabeled is not None or self.label_fraction < 1)

    def uses_teacher(self) -> bool:
        """Whether any signal needs the teacher (a labels-only baseline does not run it)."""
        return self.pseudo_labels() or self.kd_assign or any(w > 0 for w in self.loss_weights().values())
