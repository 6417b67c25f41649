"""The trainer behind `onedet train` and `onedet.train(cfg)` (one code path).

One `Trainer` owns a run: it opens the store's `train` and `val` splits, builds the detector for the fine-tuning
mode (frozen backbone, LoRA adapters, or everything), and loops over epochs: AdamW with a per-step warm-up +
cosine schedule, gradient clipping, an EMA of the weights, evaluation of the EMA weights on `val` (COCO AP via
`onedet.evaluate`), checkpoints `last` (every epoch, and every N steps if asked) and `best` (by AP). Under
torchrun it trains data-parallel (DDP): every rank reads its own shard, rank 0 alone evaluates and writes.

Resuming restores the live weights, optimizer, scheduler, EMA, loader position and RNG states of `last`, so an
interrupted run ends with the weights an uninterrupted one gets.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from onedet.errors import OnedetError
from onedet.train import amp, distributed
from onedet.train.checkpoint import (
    WEIGHTS,
    checkpoint_dir,
    link_checkpoint,
    load_weights,
    read_info,
    read_train_state,
    read_weights,
    rng_state,
    set_rng_state,
    write_checkpoint,
)
from onedet.train.config import TrainConfig, config_to_dict
from onedet.train.ema import WeightEma
from onedet.train.features import (
    CachedFeatureLoader,
    CachedFeatureModel,
    FeatureCache,
)
from onedet.train.logging import RunLog
from onedet.train.optim import build_optimizer, build_scheduler, param_groups

TRAIN_CONFIG = "train_config.json"
# Settings that may differ when resuming (where and how it runs); everything else comes from the saved run.
_RESUME_OVERRIDES = ("data", "out", "resume", "device", "workers", "progress", "max_minutes")


class TrainResult(NamedTuple):
    run: Path
    """The run folder."""
    metrics: dict[str, Any] | None
    """COCO metrics of the `best` checkpoint on `val` (None without a `val` split)."""


def train(cfg: TrainConfig) -> TrainResult:
    """Train as `cfg` says; returns the run folder and the best checkpoint's validation metrics."""
    trainer = Trainer(cfg)
    try:
        return trainer.fit()
    finally:
        trainer.close()


class AmpForward(nn.Module):
    """`Detector.forward` with the mixed-precision plan applied per part (and, for cached features, from
    features `[B, T*C, h, w]` instead of images). DDP wraps this module, so that its forward is the step's."""

    def __init__(self, detector: nn.Module, plan: amp.AmpPlan, device: torch.device, cached: bool = False) -> None:
        super().__init__()
        self.detector, self.plan, self.device, self.cached = detector, plan, device, cached
        self.config = detector.config

    def forward(self, x: Tensor) -> Any:
        if self.cached:
            features = x
        else:
            # A frozen backbone records nothing for autograd (its features are constants to the neck).
            trains = any(p.requires_grad for p in self.detector.backbone.parameters())
            with (
                amp.autocast(self.device, self.plan.backbone),
                torch.set_grad_enabled(trains and torch.is_grad_enabled()),
            ):
                features = self.detector.forward_features(x)  # float32 (a LayerNorm's output)
        with amp.autocast(self.device, self.plan.rest):
            return self.detector.forward_head(features)


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        raise OnedetError(f"{out}: the run folder is not writable: {err.strerror or err}") from err


def _open_store(path: Path) -> Any:
    from onedet.data.store import Store

    return Store(path)


class Trainer:
    """One training run; see the module docstring. `fit()` runs it."""

    def __init__(self, cfg: TrainConfig) -> None:
        from onedet.config import ModelConfig

        info = distributed.env_info()
        self.device = distributed.select_device(cfg.device, info)
        self.dist = distributed.init(self.device)
        self.is_main = self.dist.is_main
        if cfg.workers:
            torch.set_num_threads(cfg.workers)
        self.out = Path(cfg.out)
        last = self.out / "weights" / "last"
        self.resume_from: Path | None = None
        if cfg.resume:
            self.resume_from = checkpoint_dir(self.out, "last") if (self.out / "weights").is_dir() else None
            if self.resume_from is None:
                raise OnedetError(f"{self.out}: nothing to resume (no weights/last checkpoint)")
            saved = json.loads((self.out / TRAIN_CONFIG).read_text())
            merged = {**saved, **{k: getattr(cfg, k) for k in _RESUME_OVERRIDES}}
            merged["data"], merged["out"] = Path(merged["data"]), Path(merged["out"])
            cfg = type(cfg)(**merged)
        elif (last / "model.safetensors").exists() or any(self.out.glob("weights/.last.old-*")):
            raise OnedetError(f"{self.out}: already holds a run; pass --resume to continue it, or choose another --out")
        self.cfg = cfg
        if cfg.cache_features and cfg.finetune != "frozen":
            raise OnedetError("--cache-features needs a frozen backbone (--finetune frozen)")
        if self.is_main:
            _check_writable(self.out)
        distributed.barrier()

        data = Path(cfg.data)
        self.train_store = _open_store(data / "train")
        self.val_store = _open_store(data / "val") if (data / "val" / "meta.json").is_file() else None
        self.classes = list(self.train_store.classes)
        self.category_ids = list(self.train_store.category_ids)
        if self.val_store is not None and list(self.val_store.classes) != self.classes:
            raise OnedetError(
                f"{data / 'val'}: classes {self.val_store.classes} differ from the train split's {self.classes}"
            )

        torch.manual_seed(cfg.seed)
        if self.resume_from is not None:
            info_json = read_info(self.resume_from)
            if list(info_json["classes"]) != self.classes:
                raise OnedetError(
                    f"{data / 'train'}: the store's classes {self.classes} do not match the checkpoint's "
                    f"{info_json['classes']} ({self.resume_from}); resume with the store the run was trained on"
                )
            self.model_config = ModelConfig.from_dict({**info_json["model"], "pretrained": None})
        else:
            self.model_config = self._model_config()
        self.detector = self._build_detector()
        self.detector.to(self.device)
        self.plan = amp.plan(cfg.amp, self.device, backbone_frozen=cfg.finetune == "frozen")
        self.criterion = self.build_criterion()
        self.loss_weights = dict(self.model_config.loss_weights)

        self.log = RunLog(self.out, enabled=self.is_main, progress=cfg.progress)
        self._build_loaders()
        self.forward = self.build_forward()
        self.step_model = distributed.wrap(self.forward, self.device)
        self.optimizer = build_optimizer(
            self.detector,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            backbone_lr_scale=cfg.backbone_lr_scale if cfg.finetune != "frozen" else 1.0,
        )
        self.extras = self.trainable_extras()
        if self.extras is not None:
            for group in param_groups(self.extras, lr=cfg.lr, weight_decay=cfg.weight_decay):
                self.optimizer.add_param_group(group)
        self.steps_per_epoch = len(self.loader)
        self.epochs = cfg.epochs  # the schedule's length; a time budget may refit it (_fit_to_budget)
        self.scheduler = build_scheduler(
            self.optimizer,
            steps_per_epoch=self.steps_per_epoch,
            epochs=lambda: self.epochs,
            warmup_epochs=cfg.warmup_epochs,
        )
        self.ema = WeightEma(self.detector, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.params = [p for p in self.detector.parameters() if p.requires_grad]
        if self.extras is not None:
            self.params += [p for p in self.extras.parameters() if p.requires_grad]
        self.global_step = 0
        self.best_ap = -math.inf
        self.elapsed = 0.0
        self.epoch_sums: dict[str, float] = {}
        self.epoch_steps = 0
        self.epoch_images = 0
        self.epoch_seconds = 0.0
        if self.resume_from is not None:
            self._restore(self.resume_from)
        elif self.is_main:
            tmp = self.out / f".{TRAIN_CONFIG}.tmp"
            tmp.write_text(json.dumps(config_to_dict(cfg), indent=2) + "\n")
            os.replace(tmp, self.out / TRAIN_CONFIG)

    # --- set-up ---------------------------------------------------------------------------------------------------

    def _model_config(self) -> Any:
        from onedet.config import ModelConfig

        cfg = self.cfg
        overrides = dict(cfg.model)
        if cfg.pretrained != "preset":
            overrides["pretrained"] = cfg.pretrained
        overrides["freeze_backbone"] = cfg.finetune != "full"
        probe = ModelConfig.from_preset(cfg.preset, **{k: v for k, v in overrides.items() if k != "image_size"})
        size = cfg.image_size or overrides.get("image_size") or self.train_store.image_size
        multiple = probe.input_multiple
        overrides["image_size"] = math.ceil(size / multiple) * multiple  # the detector pads inputs to it
        overrides["num_classes"] = len(self.classes)
        return ModelConfig.from_preset(cfg.preset, **overrides)

    def _build_detector(self) -> nn.Module:
        from onedet.model.detector import Detector, build_detector

        cfg = self.cfg
        if self.resume_from is not None:
            detector = Detector(self.model_config)
            problem = "cannot resume, the weights do not fit the model"
            load_weights(detector, read_weights(self.resume_from), self.resume_from / WEIGHTS, problem=problem)
        else:
            detector = build_detector(self.model_config)
        detector.set_backbone_frozen(cfg.finetune != "full")
        self.lora_config = None
        if cfg.finetune == "lora":
            from onedet.lora import apply_lora

            self.lora_config = apply_lora(detector, rank=cfg.lora_rank)
        return detector

    def _build_loaders(self) -> None:
        from onedet.data.augment import BatchAugment
        from onedet.data.loader import BatchLoader

        cfg = self.cfg
        rank, world = self.dist.rank, self.dist.world_size
        self.val_cache = None
        if cfg.cache_features:
            index_loader = BatchLoader(
                self.train_store, cfg.batch_size, seed=cfg.seed, device=self.device, rank=rank, world_size=world
            )
            cache_dir = self.out / "cache"
            build = dict(
                batch_size=cfg.eval_batch_size or cfg.batch_size,
                device=self.device,
                dtype=self.plan.backbone,
                rank=rank,
                world_size=world,
                progress=cfg.progress and self.is_main,
            )
            cache = FeatureCache.build(self.detector, self.train_store, cache_dir, "train", **build)
            self.loader: Any = CachedFeatureLoader(
                cache,
                self.train_store,
                index_loader,
                flip=0.5 if cfg.augment else 0,
                dtype=self.plan.rest or torch.float32,
            )
            if self.val_store is not None:
                self.val_cache = FeatureCache.build(self.detector, self.val_store, cache_dir, "val", **build)
        else:
            augment = BatchAugment() if cfg.augment else None
            self.loader = BatchLoader(
                self.train_store,
                cfg.batch_size,
                seed=cfg.seed,
                device=self.device,
                augment=augment,
                rank=rank,
                world_size=world,
            )

    # --- what a step runs (the seam `onedet.train.distill` overrides) ------------------------------------------

    def build_forward(self) -> nn.Module:
        """The module a step calls on `batch.images` (what DDP wraps): the detector under the AMP plan."""
        return AmpForward(self.detector, self.plan, self.device, cached=self.cfg.cache_features)

    def build_criterion(self) -> Callable[[Any, Any], dict[str, Tensor]]:
        """`criterion(output, batch) -> terms`, the unweighted loss terms that `loss_weights` weigh."""
        from onedet.loss import DetectionLoss

        loss = DetectionLoss(self.model_config)

        def criterion(output: Any, batch: Any) -> dict[str, Tensor]:
            return loss(output, batch.boxes_xyxy, batch.labels, batch.valid)

        return criterion

    def trainable_extras(self) -> nn.Module | None:
        """Trainable modules besides the detector, inside `build_forward()`'s module (so DDP averages their gradients;
        called after it): optimised with the detector, saved under `train_state.pt["extras"]` and restored."""
        return None

    # --- checkpoints ------------------------------------------------------------------------------------------

    @contextmanager
    def _ema_weights(self) -> Any:
        with self.ema.applied(self.detector) if self.ema is not None else nullcontext():
            yield self.detector

    def _model_info(self) -> dict[str, Any]:
        return {
            "model": self.model_config.to_dict(),
            "classes": self.classes,
            "category_ids": self.category_ids,
            "finetune": self.cfg.finetune,
            "global_step": self.global_step,
            "epochs_done": self.loader.epoch + self.loader.state_dict()["position"] / max(1, self.steps_per_epoch),
        }

    def _export_weights(self) -> tuple[dict[str, Tensor], dict[str, Tensor] | None]:
        """The EMA weights under plain `Detector` names (LoRA merged), and the EMA adapters alone."""
        from onedet.lora import adapter_state_dict, merged_state_dict

        with self._ema_weights() as detector:
            if self.lora_config is not None:
                weights = merged_state_dict(detector)
                adapter = {k: v.detach().clone() for k, v in adapter_state_dict(detector).items()}
            else:
                weights, adapter = detector.state_dict(), None
            weights = {k: v.detach().to("cpu", copy=True) for k, v in weights.items()}
        return weights, adapter

    def _train_state(self, weights: dict[str, Tensor]) -> dict[str, Any]:
        raw = self.detector.state_dict()
        # Only the live tensors that model.safetensors does not already hold (neck/head before EMA, LoRA bases...).
        live = {k: v.detach().cpu() for k, v in raw.items() if k not in weights or not torch.equal(v.cpu(), weights[k])}
        return {
            "global_step": self.global_step,
            "epochs": self.epochs,
            "model": live,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else {},
            "extras": {k: v.detach().cpu() for k, v in self.extras.state_dict().items()}
            if self.extras is not None
            else {},
            "loader": dict(self.loader.state_dict()),
            "rng": rng_state(),
            "best_ap": float(self.best_ap),
            "elapsed": float(self.elapsed),
            "epoch_sums": dict(self.epoch_sums),
            "epoch_steps": self.epoch_steps,
            "epoch_images": self.epoch_images,
            "epoch_seconds": float(self.epoch_seconds),
            "finetune": self.cfg.finetune,
            "classes": list(self.classes),
        }

    def save(self, best: bool = False) -> None:
        """Write `last` (with the training state), and `best` too when asked; rank 0 only."""
        if self.is_main:
            weights, adapter = self._export_weights()
            extra = None
            if adapter is not None:
                from onedet.lora import save_adapter

                def extra(folder: Path) -> None:
                    save_adapter(self.lora_config, adapter, folder / "adapter")

            info = self._model_info()
            folder = self.out / "weights"
            write_checkpoint(
                folder / "last", weights=weights, info=info, train_state=self._train_state(weights), write_extra=extra
            )
            if best:  # the same files as last's, less the training state
                link_checkpoint(folder / "last", folder / "best")
        distributed.barrier()

    def _restore(self, folder: Path) -> None:
        state = read_train_state(folder)
        if state.get("finetune") != self.cfg.finetune:
            raise OnedetError(f"{folder}: trained with --finetune {state.get('finetune')}, not {self.cfg.finetune}")
        missing = self.detector.load_state_dict(state["model"], strict=False).unexpected_keys
        if missing:
            raise OnedetError(f"{folder}: training state has weights the model lacks: {missing[:3]}")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        if self.extras is not None:
            self.extras.load_state_dict(state["extras"])
        self.loader.load_state_dict(state["loader"])
        set_rng_state(state["rng"])
        self.global_step = int(state["global_step"])
        self.epochs = int(state["epochs"])
        self.best_ap = float(state["best_ap"])
        self.elapsed = float(state["elapsed"])
        self.epoch_sums = {k: float(v) for k, v in state["epoch_sums"].items()}
        self.epoch_steps = int(state["epoch_steps"])
        self.epoch_images = int(state["epoch_images"])
        self.epoch_seconds = float(state["epoch_seconds"])
        self.log.message(f"resumed {self.out} at epoch {self.loader.epoch + 1}, step {self.global_step}")

    # --- the loop ---------------------------------------------------------------------------------------------

    def _step(self, batch: Any) -> dict[str, float]:
        from onedet.loss import weighted_total

        output = self.step_model(batch.images)
        terms = self.criterion(output, batch)
        total = weighted_total(terms, self.loss_weights)
        finite = distributed.all_reduce_mean(torch.isfinite(total.detach()).float().reshape(1))
        if float(finite) < 1:
            self._stop_non_finite("loss", {k: float(v.detach()) for k, v in terms.items()})
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if self.cfg.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
            if not torch.isfinite(norm):
                self._stop_non_finite("gradient norm", {"grad_norm": float(norm)})
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.detector)
        self.global_step += 1
        values = {k: float(v.detach()) for k, v in terms.items()}
        values["loss"] = float(total.detach())
        return values

    def _stop_non_finite(self, what: str, values: dict[str, float]) -> None:
        shown = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
        last = self.out / "weights" / "last"
        kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written yet"
        raise OnedetError(
            f"non-finite {what} at epoch {self.loader.epoch + 1}, step {self.global_step + 1} ({shown}); training "
            f"stopped and {kept}. Try a lower --lr (now {self.cfg.lr:g}) or --grad-clip, or check the boxes."
        )

    def _evaluate(self, with_pr: bool = False, model: nn.Module | None = None) -> dict[str, Any] | None:
        from onedet.evaluate import evaluate_model

        if self.val_store is None:
            return None
        batch_size = self.cfg.eval_batch_size or self.cfg.batch_size
        if model is not None:
            return evaluate_model(model, self.val_store, batch_size=batch_size, with_pr=with_pr)
        with self._ema_weights() as detector:
            if self.val_cache is not None:
                eval_model: nn.Module = CachedFeatureModel(detector, self.val_cache)
            else:
                eval_model = AmpForward(detector, self.plan, self.device)
            return evaluate_model(eval_model, self.val_store, batch_size=batch_size, with_pr=with_pr)

    def fit(self) -> TrainResult:
        cfg = self.cfg
        start = time.perf_counter() - self.elapsed
        epoch = self.loader.epoch
        while epoch < self.epochs:
            epoch_start = time.perf_counter()
            self.loader.set_epoch(epoch)
            self.forward.train()
            self.log.start_epoch(epoch, self.epochs, self.steps_per_epoch, self.loader.state_dict()["position"])
            tick = time.perf_counter()
            for batch in self.loader:
                values = self._step(batch)
                for k, v in values.items():
                    self.epoch_sums[k] = self.epoch_sums.get(k, 0.0) + v
                self.epoch_steps += 1
                self.epoch_images += len(batch.index) * self.dist.world_size
                lr = self.optimizer.param_groups[-1]["lr"]
                self.log.step(self.global_step, {**values, "lr": lr})
                if cfg.checkpoint_every_steps and self.global_step % cfg.checkpoint_every_steps == 0:
                    self.epoch_seconds += time.perf_counter() - tick
                    tick = time.perf_counter()
                    self.elapsed = time.perf_counter() - start
                    self.save()
            self.log.end_epoch()
            self.epoch_seconds += time.perf_counter() - tick
            self.elapsed = time.perf_counter() - start
            stop = False
            if cfg.max_minutes is not None:
                stop = bool(distributed.broadcast_object(self.elapsed > cfg.max_minutes * 60))
            last = stop or epoch + 1 >= self.epochs
            self._end_epoch(epoch, evaluate=last or (epoch + 1) % max(1, cfg.eval_every) == 0)
            self.elapsed = time.perf_counter() - start
            if stop:
                self.log.message(f"stopping after epoch {epoch + 1}: --max-minutes {cfg.max_minutes} reached")
                break
            if cfg.max_minutes is not None:
                self._fit_to_budget(epoch + 1, cfg.max_minutes * 60, time.perf_counter() - epoch_start)
            epoch += 1
        return self._finish()

    def _fit_to_budget(self, epochs_done: int, budget: float, last_epoch: float) -> None:
        """Fit the schedule (cosine included) into the time budget at the pace of the last epoch (evaluation
        included), re-judged after every epoch, never beyond `epochs`; rank 0 decides for all. Since it depends
        on the clock, a resumed run may fit differently from an uninterrupted one."""
        left = max(0.0, budget - self.elapsed)
        fit = min(self.cfg.epochs, epochs_done + max(1, int(left / max(last_epoch, 1e-9))))
        fit = int(distributed.broadcast_object(fit))
        if fit != self.epochs:
            self.log.message(
                f"--max-minutes {budget / 60:g}: at {last_epoch:.0f} s per epoch, the schedule now ends after "
                f"{fit} epochs (was {self.epochs})"
            )
            self.epochs = fit

    def _end_epoch(self, epoch: int, evaluate: bool) -> None:
        row: dict[str, float] = {"epoch": epoch + 1, "step": self.global_step}
        steps = max(1, self.epoch_steps)
        for k, v in self.epoch_sums.items():
            row["loss" if k == "loss" else f"train/{k}"] = v / steps
        row["lr"] = self.optimizer.param_groups[-1]["lr"]
        row["seconds"] = self.epoch_seconds
        row["images_per_s"] = self.epoch_images / max(self.epoch_seconds, 1e-9)
        metrics = None
        if evaluate and self.is_main:
            tick = time.perf_counter()
            metrics = self._evaluate()
            if metrics is not None:
                row.update({k: metrics[k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")})
                row["eval_seconds"] = time.perf_counter() - tick
        self.epoch_sums, self.epoch_steps, self.epoch_images, self.epoch_seconds = {}, 0, 0, 0.0
        improved = metrics is not None and metrics["AP"] > self.best_ap
        if improved:
            self.best_ap = metrics["AP"]
        # Without a val split the last checkpoint is also the best one.
        tick = time.perf_counter()
        self.save(best=improved or (self.val_store is None and self.is_main))
        row["checkpoint_seconds"] = time.perf_counter() - tick
        if self.is_main:
            self.log.epoch(row)
            if evaluate:  # matplotlib takes a second or two: not worth it on every short epoch
                from onedet.train.plots import plot_curves

                plot_curves(self.log.rows, self.out / "curves.png", title=str(self.out.name))

    def _finish(self) -> TrainResult:
        metrics = None
        if self.is_main and self.val_store is not None:
            metrics = self._final_plots()
            (self.out / "metrics.json").write_text(
                json.dumps({k: v for k, v in metrics.items() if k != "pr"}, indent=2)
            )
        distributed.barrier()
        return TrainResult(self.out, metrics)

    def _final_plots(self) -> dict[str, Any]:
        """Evaluate `best` once more with precision-recall curves; write pr.png and predictions.png."""
        import numpy as np

        from onedet.postprocess import decode_topk
        from onedet.train.checkpoint import load_run
        from onedet.train.plots import plot_precision_recall, plot_predictions

        best = load_run(self.out, "best", device=self.device).model
        model = (
            CachedFeatureModel(best, self.val_cache)
            if self.val_cache is not None
            else AmpForward(best, self.plan, self.device)
        )
        metrics = self._evaluate(with_pr=True, model=model)
        pr = metrics.get("pr", {})
        recall = np.asarray(pr.get("recall", []))
        curves = {}
        for name, precision in pr.get("precision", {}).items():
            precision = np.asarray(precision)
            if (precision >= 0).any():
                curves[name] = (recall, np.clip(precision, 0, None))
        plot_precision_recall(curves, self.out / "pr.png")
        count = min(8, len(self.val_store))
        raw = self.val_store.read_batch(np.arange(count))
        images = torch.as_tensor(raw["images"])
        model.eval()
        with torch.inference_mode():
            out = model(images.to(self.device).float() / 255)
            boxes, scores, labels = decode_topk(out.logits.float(), out.boxes_xyxy.float(), 20)
        valid = torch.as_tensor(raw["valid"])
        plot_predictions(
            [im.permute(1, 2, 0).numpy() for im in images],
            boxes.cpu().numpy(),
            labels.cpu().numpy(),
            scores.cpu().numpy(),
            self.classes,
            self.out / "predictions.png",
            truth_xyxy=[torch.as_tensor(raw["boxes_xyxy"])[i][valid[i]].numpy() for i in range(count)],
        )
        return metrics

    def close(self) -> None:
        if hasattr(self, "log"):
            self.log.close()
        distributed.shutdown()
