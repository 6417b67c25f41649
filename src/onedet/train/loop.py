"""The trainer behind `onedet train` and `onedet.train(cfg)` (one code path).

One `Trainer` owns a run: it opens the store's `train` and `val` splits, builds the detector for the fine-tuning
mode (frozen backbone, LoRA adapters, or everything), and loops over epochs: AdamW with a per-step warm-up +
cosine schedule, gradient clipping, an EMA of the weights, evaluation of the EMA weights on `val` (COCO AP via
`onedet.evaluate`), checkpoints `last` (every epoch, and every N steps if asked) and `best` (by AP). Under
torchrun it trains data-parallel (DDP): every rank reads its own shard, rank 0 alone evaluates and writes.

Resuming restores the live weights, optimizer, scheduler, EMA, loader position and RNG states of `last`, so an
interrupted run ends with the weights an uninterrupted one gets. What the run is built from comes from
`onedet.train.setup`; how checkpoints are written, from `onedet.train.saving`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from onedet.atomic import write_json
from onedet.checkpoint import checkpoint_dir, read_train_state
from onedet.data.loader import Batch
from onedet.errors import OnedetError
from onedet.train import amp, distributed, saving
from onedet.train.config import TRAIN_CONFIG, TrainConfig, TrainResult, config_to_dict
from onedet.train.ema import WeightEma
from onedet.train.features import CachedFeatureModel
from onedet.train.logging import EpochMeter, RunLog
from onedet.train.optim import CosineSchedule, build_optimizer, epochs_in_budget
from onedet.train.setup import build_loaders, build_run_detector, open_splits, resolve_run, run_model_config

if TYPE_CHECKING:
    from onedet.model.detector import Detector


class Trainer:
    """One training run; see the module docstring. `fit()` runs it.

    Subclasses (e.g. distillation) change the seams: `build_forward` (the module DDP wraps), `build_criterion`
    (unweighted named loss terms of its output and the batch, weighted by `loss_weights`), `trainable_extras`
    (trained beside the detector, checkpointed with it), and `build_model_config`/`build_detector`/`build_loaders`.
    """

    def __init__(self, cfg: TrainConfig) -> None:
        self.device = distributed.select_device(cfg.device, distributed.env_info())
        self.dist = distributed.init(self.device)
        self.is_main = self.dist.is_main
        if cfg.workers:
            torch.set_num_threads(cfg.workers)
        self.out = Path(cfg.out)
        cfg, self.resume_from = resolve_run(cfg)
        self.cfg = cfg
        if cfg.cache_features and cfg.finetune != "frozen":
            raise OnedetError("--cache-features needs a frozen backbone (--finetune frozen)")
        if self.is_main:
            saving.check_writable(self.out)
        distributed.barrier()

        self.train_store, self.val_store = open_splits(Path(cfg.data))
        if cfg.patience is not None and self.val_store is None:
            raise OnedetError(f"{cfg.data}: --patience stops when val AP stops improving, but there is no val split")
        self.classes = list(self.train_store.classes)
        self.category_ids = list(self.train_store.category_ids)
        torch.manual_seed(cfg.seed)
        self.model_config = self.build_model_config()
        self.detector, self.lora_config = self.build_detector()
        self.detector.to(self.device)
        self.amp_dtype = amp.plan(cfg.amp, self.device, backbone_frozen=cfg.finetune == "frozen")
        self.criterion = self.build_criterion()
        self.loss_weights = dict(self.model_config.loss_weights)

        self.log = RunLog(self.out, enabled=self.is_main, progress=cfg.progress)
        self.loader, self.val_cache = self.build_loaders()
        self.forward = self.build_forward()
        self.step_model = distributed.wrap(self.forward, self.device)
        self.extras = self.trainable_extras()
        trained = (
            self.detector if self.extras is None else nn.ModuleDict({"detector": self.detector, "extras": self.extras})
        )
        self.optimizer = build_optimizer(
            trained,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            backbone_lr_scale=cfg.backbone_lr_scale if cfg.finetune != "frozen" else 1.0,
        )
        self.steps_per_epoch = len(self.loader)
        # The schedule's length in epochs: a time budget may refit it (_fit_to_budget).
        self.schedule = CosineSchedule(
            steps_per_epoch=self.steps_per_epoch, epochs=cfg.epochs, warmup_epochs=cfg.warmup_epochs
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.schedule)
        self.ema = WeightEma(self.detector, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.params = [p for p in trained.parameters() if p.requires_grad]
        self.global_step = 0
        self.best_ap = -math.inf
        self.best_epoch = 0  # the epoch (from 1) whose evaluation gave best_ap
        self.elapsed = 0.0
        self.meter = EpochMeter()
        if self.resume_from is not None:
            self._restore(self.resume_from)
        elif self.is_main:
            write_json(self.out / TRAIN_CONFIG, config_to_dict(cfg))

    # --- the seams --------------------------------------------------------------------------------------------

    def build_forward(self) -> nn.Module:
        """The module DDP wraps, called on `batch.images` each step: the detector under the autocast plan."""
        return amp.AmpForward(self.detector, self.amp_dtype, self.device, cached=self.cfg.cache_features)

    def build_criterion(self) -> Callable[[Any, Batch], dict[str, Tensor]]:
        """`criterion(output, batch) -> {name: unweighted term}`; `loss_weights` weighs the terms outside."""
        from onedet.model.loss import DetectionLoss

        loss = DetectionLoss.from_config(self.model_config)

        def criterion(output: Any, batch: Batch) -> dict[str, Tensor]:
            return loss(output, batch.boxes_xyxy, batch.labels, batch.valid)

        return criterion

    def trainable_extras(self) -> nn.Module | None:
        """Modules trained beside the detector (their parameters optimised, their state_dict saved in
        `train_state.pt` under `"extras"` and restored on resume); None by default."""
        return None

    def build_model_config(self) -> Any:
        return run_model_config(self.cfg, self.train_store, self.resume_from)

    def build_detector(self) -> tuple[Detector, Any]:  # (the detector to train, its LoRA config or None)
        return build_run_detector(self.model_config, self.cfg.finetune, self.cfg.lora_rank, self.resume_from)

    def build_loaders(self) -> tuple[Any, Any]:  # (the training loader, the val feature cache or None)
        args = (self.train_store, self.val_store, self.detector, self.amp_dtype, self.device, self.dist, self.is_main)
        return build_loaders(self.cfg, *args)

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

    def _stateful(self) -> dict[str, Any]:
        """The parts whose `state_dict` `train_state.pt` holds under these keys (`ema` and `extras` when present)."""
        parts = dict(optimizer=self.optimizer, scheduler=self.scheduler, ema=self.ema, loader=self.loader)
        return {k: v for k, v in {**parts, "extras": self.extras}.items() if v is not None}

    def _train_state(self, weights: dict[str, Tensor]) -> dict[str, Any]:
        return {
            "global_step": self.global_step,
            "epochs": self.schedule.epochs,
            "model": saving.live_tensors(self.detector, weights),
            **{k: dict(v.state_dict()) for k, v in self._stateful().items()},
            "rng": saving.rng_state(),
            "best_ap": float(self.best_ap),
            "best_epoch": self.best_epoch,
            "elapsed": float(self.elapsed),
            **self.meter.state_dict(),
            "finetune": self.cfg.finetune,
            "classes": list(self.classes),
        }

    def save(self, best: bool = False) -> None:
        """Write `last` (with the training state), and `best` too when asked; rank 0 only."""
        if self.is_main:
            with self._ema_weights() as detector:
                weights, adapter = saving.export_weights(detector, lora=self.lora_config is not None)
            saving.save_run_checkpoints(
                self.out / "weights",
                weights=weights,
                info=self._model_info(),
                train_state=self._train_state(weights),
                adapter=(self.lora_config, adapter) if adapter is not None else None,
                best=best,
            )
        distributed.barrier()

    def _restore(self, folder: Path) -> None:
        state = read_train_state(folder)
        if state.get("finetune") != self.cfg.finetune:
            raise OnedetError(f"{folder}: trained with --finetune {state.get('finetune')}, not {self.cfg.finetune}")
        missing = self.detector.load_state_dict(state["model"], strict=False).unexpected_keys
        if missing:
            raise OnedetError(f"{folder}: training state has weights the model lacks: {missing[:3]}")
        for key, part in self._stateful().items():
            part.load_state_dict(state[key])
        saving.set_rng_state(state["rng"])
        self.global_step = int(state["global_step"])
        # The scheduler's state restored the schedule's fields; checkpoints written before the schedule was an
        # object (a plain lambda, not saved) restore its length from here.
        if self.schedule.epochs != int(state["epochs"]):
            self.schedule.refit(self.global_step, int(state["epochs"]))
        self.best_ap = float(state["best_ap"])
        # (checkpoints written before early stopping existed do not say: patience counts from the resume)
        self.best_epoch = int(state.get("best_epoch", self.loader.epoch))
        self.elapsed = float(state["elapsed"])
        self.meter.load_state_dict(state)
        self.log.message(f"resumed {self.out} at epoch {self.loader.epoch + 1}, step {self.global_step}")

    # --- the loop ---------------------------------------------------------------------------------------------

    def _step(self, batch: Batch) -> dict[str, float]:
        from onedet.model.loss import weighted_total

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
            return evaluate_model(self._eval_model(detector), self.val_store, batch_size=batch_size, with_pr=with_pr)

    def _eval_model(self, detector: Detector) -> nn.Module:
        """`detector` as evaluation runs it: on the cached val features, or under the autocast plan."""
        if self.val_cache is not None:
            return CachedFeatureModel(detector, self.val_cache)
        return amp.AmpForward(detector, self.amp_dtype, self.device)

    def fit(self) -> TrainResult:
        cfg = self.cfg
        start = time.perf_counter() - self.elapsed
        epoch = self.loader.epoch
        while epoch < self.schedule.epochs:
            epoch_start = time.perf_counter()
            self.loader.set_epoch(epoch)
            if cfg.mosaic:
                # the last --close-mosaic epochs of the schedule as it stands (a time budget may have shortened it)
                self.loader.mosaic_epochs = self.schedule.epochs - cfg.close_mosaic
                if epoch == self.loader.mosaic_epochs:
                    self.log.message(f"epoch {epoch + 1}: mosaic off for the last {cfg.close_mosaic} epochs")
            self.forward.train()
            self.log.start_epoch(
                epoch, self.schedule.epochs, self.steps_per_epoch, self.loader.state_dict()["position"]
            )
            tick = time.perf_counter()
            for batch in self.loader:
                values = self._step(batch)
                self.meter.add(values, len(batch.index) * self.dist.world_size)
                lr = self.optimizer.param_groups[-1]["lr"]
                self.log.step(self.global_step, {**values, "lr": lr})
                if cfg.checkpoint_every_steps and self.global_step % cfg.checkpoint_every_steps == 0:
                    self.meter.seconds += time.perf_counter() - tick
                    tick = time.perf_counter()
                    self.elapsed = time.perf_counter() - start
                    self.save()
            self.log.end_epoch()
            self.meter.seconds += time.perf_counter() - tick
            self.elapsed = time.perf_counter() - start
            stop = False
            if cfg.max_minutes is not None:
                stop = bool(distributed.broadcast_object(self.elapsed > cfg.max_minutes * 60))
            last = stop or epoch + 1 >= self.schedule.epochs
            evaluate = last or (epoch + 1) % max(1, cfg.eval_every) == 0
            self._end_epoch(epoch, evaluate=evaluate)
            self.elapsed = time.perf_counter() - start
            if stop:
                self.log.message(f"stopping after epoch {epoch + 1}: --max-minutes {cfg.max_minutes} reached")
                break
            if cfg.patience is not None and evaluate and not last:
                # rank 0 alone evaluates, so it decides for all
                stale = distributed.broadcast_object(epoch + 1 - self.best_epoch)
                if stale >= cfg.patience:
                    self.log.message(
                        f"stopping after epoch {epoch + 1}: val AP has not improved for {stale} epochs (--patience "
                        f"{cfg.patience}); the best, AP {self.best_ap:.4f}, is epoch {self.best_epoch}'s"
                    )
                    break
            if cfg.max_minutes is not None:
                self._fit_to_budget(epoch + 1, cfg.max_minutes * 60, time.perf_counter() - epoch_start)
            epoch += 1
        return self._finish()

    def _fit_to_budget(self, epochs_done: int, budget: float, last_epoch: float) -> None:
        """Fit the schedule (cosine included) into the time budget at the pace of the last epoch (evaluation
        included), re-judged after every epoch, never beyond `epochs`; rank 0 decides for all. Since it depends
        on the clock, a resumed run may fit differently from an uninterrupted one."""
        fit = epochs_in_budget(epochs_done, self.cfg.epochs, max(0.0, budget - self.elapsed), last_epoch)
        fit = distributed.broadcast_object(fit)
        if fit != self.schedule.epochs:
            self.log.message(
                f"--max-minutes {budget / 60:g}: at {last_epoch:.0f} s per epoch, the schedule now ends after "
                f"{fit} epochs (was {self.schedule.epochs})"
            )
            self.schedule.refit(self.global_step, fit)

    def _end_epoch(self, epoch: int, evaluate: bool) -> None:
        row = self.meter.row(epoch + 1, self.global_step, self.optimizer.param_groups[-1]["lr"])
        metrics = None
        if evaluate and self.is_main:
            tick = time.perf_counter()
            metrics = self._evaluate()
            if metrics is not None:
                row.update({k: metrics[k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")})
                row["eval_seconds"] = time.perf_counter() - tick
        self.meter.reset()
        improved = metrics is not None and metrics["AP"] > self.best_ap
        if improved:
            assert metrics is not None  # `improved` says so
            self.best_ap, self.best_epoch = metrics["AP"], epoch + 1
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
        """Evaluate `best` once more with precision-recall curves; write metrics.json, pr.png and predictions.png, and
        record each class's best-F1 score in best's model.json (what predict and export use as its threshold)."""
        metrics = None
        if self.is_main and self.val_store is not None:
            from onedet.checkpoint import load_run
            from onedet.evaluate import record_thresholds
            from onedet.train.report import write_final_plots

            model = self._eval_model(load_run(self.out, "best", device=self.device).model)
            metrics = self._evaluate(with_pr=True, model=model)
            assert metrics is not None  # there is a val split
            write_final_plots(model, metrics, self.val_store, self.classes, self.out, self.device)
            write_json(self.out / "metrics.json", {k: v for k, v in metrics.items() if k != "pr"})
            record_thresholds(checkpoint_dir(self.out, "best"), metrics, self.classes)
        distributed.barrier()
        return TrainResult(self.out, metrics)

    def close(self) -> None:
        if hasattr(self, "log"):
            self.log.close()
        distributed.shutdown()
