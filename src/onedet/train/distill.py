"""`onedet distill`: train a smaller student from a trained teacher run, as the trainer with another criterion.

`DistillTrainer` is the `Trainer` (EMA, AMP, schedules in epochs, `--max-minutes`, exact `--resume`, DDP,
metrics, plots, checkpoints) with three parts swapped through its seam: the step's forward runs the student and
the frozen teacher on the same augmented batch (`DistillForward`, what DDP wraps, with the feature projectors
inside it so their gradients are averaged too), the criterion is `DistillLoss` (onedet/model/distill_loss.py),
and the projectors are the trainable extras (optimised, saved in `train_state.pt`, restored on resume). The
teacher runs in inference mode, under bf16 autocast where the AMP plan has it, with its aux branch on and its
peak filter off (the dense targets are its raw scores). With `--unlabeled`, every step also takes a batch from a
second seeded loader over that store (its position is part of the saved loader state) and concatenates it,
marked unlabelled: those images get the distillation terms only, among them the pseudo-label terms (the teacher's
detections as their ground truth).

The student's run folder is an ordinary one (`eval`, `export`, `predict` take it); its `model.json` records the
teacher and the student spec under `"distill"`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple, cast

import torch
from torch import Tensor, nn

from onedet.checkpoint import AUX_PREFIX, WEIGHTS, LoadedRun, checkpoint_dir, load_run
from onedet.data.loader import Batch
from onedet.errors import OnedetError
from onedet.model.detector import Detector, DetectorOutput
from onedet.model.distill_loss import DistillLoss, DistillOutput, build_projectors, check_compatible
from onedet.model.student import build_student, parse_student, student_config
from onedet.train import amp, distributed
from onedet.train.config import TrainResult
from onedet.train.distill_config import PSEUDO_THRESHOLD_FALLBACK, DistillConfig
from onedet.train.loop import Trainer
from onedet.train.setup import prepare_for_finetune

__all__ = ["DistillConfig", "DistillTrainer", "distill"]


def distill(cfg: DistillConfig) -> TrainResult:
    """Distil as `cfg` says; returns the student's run folder and its best checkpoint's validation metrics."""
    trainer = DistillTrainer(cfg)
    try:
        return trainer.fit()
    finally:
        trainer.close()


class DistillBatch(NamedTuple):
    """A `Batch` with a per-image `labeled [B]` mask (False: an image of the unlabelled store, no boxes)."""

    images: Tensor
    boxes_xyxy: Tensor
    labels: Tensor
    valid: Tensor
    index: Tensor  # type: ignore[assignment]  # shadows tuple.index; the name is Batch's field, kept
    labeled: Tensor


def _pad_boxes(t: Tensor, m: int, value: float) -> Tensor:
    """`[B, M, ...]` padded with `value` to `[B, m, ...]`."""
    extra = m - t.shape[1]
    return t if extra == 0 else torch.cat([t, t.new_full((t.shape[0], extra, *t.shape[2:]), value)], dim=1)


def _concat(labeled: DistillBatch, unlabeled: Any) -> DistillBatch:
    m = max(labeled.boxes_xyxy.shape[1], unlabeled.boxes_xyxy.shape[1])
    none = torch.zeros(len(unlabeled.index), dtype=torch.bool, device=labeled.labeled.device)
    return DistillBatch(
        torch.cat([labeled.images, unlabeled.images]),
        torch.cat([_pad_boxes(labeled.boxes_xyxy, m, 0), _pad_boxes(unlabeled.boxes_xyxy, m, 0)]),
        torch.cat([_pad_boxes(labeled.labels, m, 0), _pad_boxes(unlabeled.labels, m, 0)]),
        # an unlabelled image has no boxes, whatever its store holds
        torch.cat([_pad_boxes(labeled.valid, m, False), torch.zeros_like(_pad_boxes(unlabeled.valid, m, False))]),
        torch.cat([labeled.index, unlabeled.index]),
        torch.cat([labeled.labeled, none]),
    )


class PairedLoader:
    """The labelled loader, each batch joined by one of the unlabelled loader (which cycles over its own epochs).

    Epochs, length and position are the labelled loader's; `state_dict()` adds the unlabelled one's under
    `"unlabeled"`, so a resumed run draws the same unlabelled batches. `labeled_subset` (bool `[len(store)]`)
    marks the labelled store's images whose boxes count; the others become unlabelled images.
    """

    def __init__(self, labeled: Any, unlabeled: Any | None = None, labeled_subset: Tensor | None = None) -> None:
        self.labeled, self.unlabeled, self.labeled_subset = labeled, unlabeled, labeled_subset

    @property
    def epoch(self) -> int:
        return self.labeled.epoch

    def set_epoch(self, epoch: int) -> None:
        self.labeled.set_epoch(epoch)

    @property
    def mosaic_epochs(self) -> int | None:
        return self.labeled.mosaic_epochs

    @mosaic_epochs.setter
    def mosaic_epochs(self, epochs: int | None) -> None:  # the labelled images only: mosaic needs their boxes
        self.labeled.mosaic_epochs = epochs

    def __len__(self) -> int:
        return len(self.labeled)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = dict(self.labeled.state_dict())
        if self.unlabeled is not None:
            state["unlabeled"] = dict(self.unlabeled.state_dict())
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.labeled.load_state_dict(state)
        if self.unlabeled is not None:
            if "unlabeled" not in state:
                raise OnedetError("the saved loader state has no unlabelled loader: resume with the same --unlabeled")
            self.unlabeled.load_state_dict(state["unlabeled"])

    def _cycle(self) -> Iterator[Any]:
        assert self.unlabeled is not None  # only cycled with an unlabelled loader (`__iter__`)
        empty_passes = 0
        while True:  # a pass advances the unlabelled loader's epoch by itself
            empty_passes += 1
            for batch in self.unlabeled:
                empty_passes = 0
                yield batch
            # one empty pass is a resumed loader at the end of its epoch; two in a row would spin here forever
            if empty_passes == 2:
                raise OnedetError("the unlabelled loader yields no batch (no images?)")

    def __iter__(self) -> Iterator[DistillBatch]:
        extra = self._cycle() if self.unlabeled is not None else None
        for batch in self.labeled:
            batch = self._mark(batch)
            yield batch if extra is None else _concat(batch, next(extra))

    def _mark(self, batch: Batch) -> DistillBatch:
        device = batch.images.device
        if self.labeled_subset is None:
            return DistillBatch(*batch, torch.ones(len(batch.index), dtype=torch.bool, device=device))
        mask = self.labeled_subset[batch.index.cpu()].to(device)
        return DistillBatch(*batch._replace(valid=batch.valid & mask[:, None]), mask)


class DistillForward(nn.Module):
    """`forward(images [B, 3, H, W] in [0, 1]) -> DistillOutput`: the student (under autocast to `dtype`, with
    gradients), its pyramid maps through `projectors` (none: no maps), and the frozen teacher (inference mode,
    `teacher_dtype` autocast) on the same images; `teacher=None` runs the student alone (a labels-only baseline
    that pays nothing for a teacher)."""

    def __init__(
        self,
        student: Detector,
        teacher: Detector | None,
        projectors: nn.ModuleList,
        dtype: torch.dtype | None,
        device: torch.device,
        teacher_dtype: torch.dtype | None = None,
        teacher_aux: bool = True,
    ) -> None:
        super().__init__()
        self.student, self.teacher, self.projectors = student, teacher, projectors
        self.dtype, self.device, self.teacher_dtype, self.teacher_aux = dtype, device, teacher_dtype, teacher_aux
        if teacher is not None:
            teacher.requires_grad_(False)
            teacher.head.use_peak_filter = False  # targets are the raw scores; the filter is an inference step
            teacher.eval()

    def train(self, mode: bool = True) -> DistillForward:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # whatever the trainer asks: no aux-by-training-mode, no dropout in the targets
        return self

    def forward(self, images: Tensor) -> DistillOutput:
        student = self.student
        trains = any(p.requires_grad for p in student.backbone.parameters())
        with amp.autocast(self.device, self.dtype), torch.set_grad_enabled(trains and torch.is_grad_enabled()):
            features = student.forward_features(images)
        with amp.autocast(self.device, self.dtype):
            maps = student.neck.pyramid(features)
            output = DetectorOutput(*student.head(maps, with_aux=self.training))
            projected = tuple(p(m).float() for p, m in zip(self.projectors, maps))
        if self.teacher is None:
            return DistillOutput(output, None, (), ())
        with torch.inference_mode(), amp.autocast(self.device, self.teacher_dtype):
            teacher_maps = self.teacher.neck.pyramid(self.teacher.forward_features(images))
            teacher = DetectorOutput(*self.teacher.head(teacher_maps, with_aux=self.teacher_aux))
        # Inference tensors cannot be saved for backward (the soft BCE saves its target): plain float32 copies, one
        # copy each (`.float().clone()` copied bf16 outputs twice); the aux fields may be None.
        copies: Iterator[Any] = (None if t is None else t.to(torch.float32, copy=True) for t in teacher)
        teacher = DetectorOutput(*copies)
        return DistillOutput(output, teacher, projected, tuple(m.to(torch.float32, copy=True) for m in teacher_maps))


def _open_unlabeled(path: Path, out: Path, image_size: int, is_main: bool) -> Any:
    """The store split at `path` (or its `train` split); a folder of bare images is prepared once, by the main
    process, into `out/unlabeled_store` at `image_size` (prepare's atomic split write: a failed run leaves nothing
    that looks complete, and a resumed run reuses it)."""
    from onedet.data.prepare import prepare
    from onedet.data.store import Store
    from onedet.train.distributed import barrier

    for split in (path, path / "train"):
        if (split / "meta.json").is_file():
            return Store(split)
    if not path.is_dir():
        raise OnedetError(f"{path}: --unlabeled must be a store split or a folder of images, and is neither")
    prepared = out / "unlabeled_store"
    if is_main and not (prepared / "unlabeled" / "meta.json").is_file():
        print(f"preparing the images under {path} into {prepared} (unlabelled, {image_size} px)", flush=True)
        prepare(path, prepared, image_size=image_size, unlabeled=True, progress=False)
    barrier()
    return Store(prepared / "unlabeled")


class DistillTrainer(Trainer):
    """One distillation run (module docstring); `fit()` runs it."""

    cfg: DistillConfig  # `resolve_run` keeps the config's class (a resumed run's saved config is one too)
    forward: DistillForward  # what `build_forward` returns

    def __init__(self, cfg: DistillConfig) -> None:
        if cfg.cache_features:
            raise OnedetError("--cache-features does not apply to distillation: the student learns on augmented images")
        if cfg.model:
            raise OnedetError(f"model overrides {sorted(cfg.model)}: give them in the student spec ('tiny:depth=4')")
        self._teacher_run: LoadedRun | None = None
        self._teacher_aux = False
        self.pseudo_thresholds: dict[str, float] | None = None  # per class, when chosen from the teacher's F1
        super().__init__(cfg)
        if self.pseudo_thresholds is not None:
            shown = ", ".join(f"{name} {value:.3g}" for name, value in self.pseudo_thresholds.items())
            self.log.message(f"pseudo-label thresholds (the teacher's F1-best scores on the val split): {shown}")
        cfg = self.cfg  # a resumed run's saved config
        model_weights = dict(self.loss_weights)  # focal, l1, giou and their aux_ (ModelConfig's defaults)
        self.loss_weights = {k: v * cfg.gt_weight for k, v in model_weights.items()}
        self.loss_weights.update(cfg.loss_weights(model_weights))

    # --- the teacher and the student ----------------------------------------------------------------------

    def teacher(self) -> LoadedRun:
        """The teacher run, loaded once (frozen, eval mode, on the device); its classes must be the store's."""
        if self._teacher_run is None:
            path = Path(self.cfg.teacher)
            if not path.exists():
                raise OnedetError(f"{path}: teacher run not found (--teacher must be a run folder or checkpoint)")
            run = load_run(path, "best", device=self.device)
            if list(run.classes) != list(self.classes):
                raise OnedetError(
                    f"{Path(self.cfg.data) / 'train'}: classes {self.classes} differ from the teacher's {run.classes} "
                    f"({path}); distil on a store with the teacher's classes"
                )
            from safetensors import safe_open

            with safe_open(str(checkpoint_dir(path, "best") / WEIGHTS), "pt") as f:  # keys only
                self._teacher_aux = run.config.aux_head and any(k.startswith(AUX_PREFIX) for k in f.keys())  # noqa: SIM118
            self._teacher_run = run
        return self._teacher_run

    def _student_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"freeze_backbone": self.cfg.finetune != "full"}
        if not parse_student(self.cfg.student).derived and self.cfg.pretrained != "preset":
            fields["pretrained"] = self.cfg.pretrained
        return fields

    def build_model_config(self) -> Any:
        if self.resume_from is not None:
            return super().build_model_config()  # the checkpoint's
        teacher = self.teacher()
        cfg = student_config(parse_student(self.cfg.student), teacher.config, **self._student_fields())
        check_compatible(cfg, teacher.config, self.train_store.image_size)
        return cfg

    def build_detector(self) -> tuple[Detector, Any]:
        if self.resume_from is not None:
            return super().build_detector()
        detector = build_student(parse_student(self.cfg.student), self.teacher().model, **self._student_fields())
        return detector, prepare_for_finetune(detector, self.cfg.finetune, self.cfg.lora_rank)

    def build_loaders(self) -> tuple[Any, Any]:
        from onedet.data.augment import BatchAugment
        from onedet.data.loader import BatchLoader

        loader, val_cache = super().build_loaders()
        cfg, unlabeled = self.cfg, None
        if cfg.unlabeled is not None:
            store = _open_unlabeled(Path(cfg.unlabeled), Path(cfg.out), self.train_store.image_size, self.is_main)
            if store.image_size != self.train_store.image_size:
                raise OnedetError(
                    f"{cfg.unlabeled}: images of {store.image_size} px, the train split's are "
                    f"{self.train_store.image_size} px; prepare both at the same --image-size"
                )
            unlabeled = BatchLoader(
                store,
                cfg.unlabeled_batch_size or cfg.batch_size,
                seed=cfg.seed + 1,  # another permutation than the labelled loader's
                device=self.device,
                augment=BatchAugment() if cfg.augment else None,
                rank=self.dist.rank,
                world_size=self.dist.world_size,
            )
        subset = None
        if cfg.label_fraction < 1:
            n = len(self.train_store)
            order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed))
            subset = torch.zeros(n, dtype=torch.bool)
            subset[order[: max(1, round(cfg.label_fraction * n))]] = True
        return PairedLoader(loader, unlabeled, subset), val_cache

    def _model_info(self) -> dict[str, Any]:
        distill: dict[str, Any] = {"teacher": str(self.cfg.teacher), "student": self.cfg.student}
        if self.pseudo_thresholds is not None:  # JSON has no infinity: null for a class without pseudo-labels
            thresholds = self.pseudo_thresholds.items()
            distill["pseudo_thresholds"] = {k: v if math.isfinite(v) else None for k, v in thresholds}
        return {**super()._model_info(), "distill": distill}

    # --- the seam ----------------------------------------------------------------------------------------------

    def build_forward(self) -> DistillForward:
        teacher = self.teacher().model
        check_compatible(self.model_config, teacher.config, self.train_store.image_size)
        weights = self.cfg.loss_weights()
        # Modules the loss would not use are not built: DDP insists that every parameter gets a gradient, and a
        # labels-only baseline (every weight 0) should not pay for the teacher's forward.
        levels = len(teacher.config.strides) if weights["kd_feat"] > 0 else 0
        projectors = build_projectors(self.model_config.neck_channels, teacher.config.neck_channels, levels)
        teacher_dtype = amp.plan(self.cfg.amp, self.device, backbone_frozen=True)
        return DistillForward(
            self.detector,
            teacher if self.cfg.uses_teacher() else None,
            projectors.to(self.device),
            self.amp_dtype,
            self.device,
            teacher_dtype,
            teacher_aux=self._teacher_aux,
        )

    def build_criterion(self) -> Any:
        from onedet.model.loss import DetectionLoss

        cfg = self.cfg
        detection = DetectionLoss.from_config(self.model_config)  # stateless: ground truth and pseudo-labels share it
        threshold: float | Tensor | None  # (declared apart: mypy narrows a plain assignment, not an annotated one)
        threshold = PSEUDO_THRESHOLD_FALLBACK
        if cfg.pseudo_labels():
            threshold = cfg.kd_pseudo_threshold
            if threshold is None:
                if self.val_store is None:  # on every rank, before the collective
                    raise OnedetError(
                        f"{cfg.data}: no val split, so the per-class pseudo-label thresholds (--kd-pseudo-threshold "
                        "none) cannot be chosen; give a score, e.g. --kd-pseudo-threshold 0.4"
                    )
                chosen = distributed.broadcast_object(self._f1_thresholds() if self.is_main else None)
                self.pseudo_thresholds = cast("dict[str, float]", chosen)  # rank 0's, on every rank
                threshold = torch.tensor([self.pseudo_thresholds[c] for c in self.classes], dtype=torch.float32)
        loss = DistillLoss(
            detection if cfg.gt_weight > 0 else None,
            box_threshold=cfg.kd_box_threshold,
            # a run whose images all have labels pays nothing for them (no decode, no matching of empty selections)
            pseudo_loss=detection if cfg.pseudo_labels() else None,
            pseudo_threshold=threshold,
            assign_by_teacher=cfg.kd_assign,
        )

        def criterion(output: DistillOutput, batch: DistillBatch) -> dict[str, Tensor]:
            return loss(output, batch.boxes_xyxy, batch.labels, batch.valid, batch.labeled)

        return criterion

    def _f1_thresholds(self) -> dict[str, float]:
        """Per class, the score at which the teacher's F1 on the val split is best (`kd_pseudo_threshold` none)."""
        from onedet.evaluate import best_f1_scores, evaluate_model

        teacher = self.teacher().model
        filtered, teacher.head.use_peak_filter = teacher.head.use_peak_filter, True  # judge it as inference runs it
        try:
            metrics = evaluate_model(teacher, self.val_store, with_pr=True)
        finally:
            teacher.head.use_peak_filter = filtered
        best = best_f1_scores(metrics["pr"])  # inf for a class never found: no pseudo-labels of it
        return {name: PSEUDO_THRESHOLD_FALLBACK if t is None else t for name, t in best.items()}

    def trainable_extras(self) -> nn.Module | None:
        return self.forward.projectors
