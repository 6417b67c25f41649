"""`OneDet`: the object-style facade (`model.train(...)`, `model.predict(image)`, `model.export(...)`).

Every method calls the function the command line calls (`onedet.train.train`, `onedet.predict.predict`,
`onedet.evaluate.evaluate_run`, `onedet.export.export`), so there is one code path. Importing this module is
torch-free (torch is imported by the methods), so `onedet.OneDet` costs nothing until it is used.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from onedet.errors import OnedetError
from onedet.options import EvalOptions, PredictOptions

if TYPE_CHECKING:
    from onedet.checkpoint import LoadedRun
    from onedet.runtime import Detections

__all__ = ["OneDet"]


def _device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class OneDet:
    """A detector: a new one from a preset (`OneDet("small")`), or a trained one (`OneDet.from_run("runs/x")`).

    `train` fills a new detector with its trained (best) weights; `predict`, `evaluate` and `export` need trained
    weights, since only they come with class names.
    """

    def __init__(self, preset: str = "base", **model_overrides: Any) -> None:
        from onedet.config import ModelConfig

        ModelConfig.from_preset(preset, **model_overrides)  # a bad preset or override fails here, not after a run
        self.preset: str | None = preset
        """The preset a new detector trains from (None for one loaded with `from_run`)."""
        self.model_overrides = model_overrides
        self.run_dir: Path | None = None
        """The run folder the weights come from (None until trained or loaded)."""
        self._run: LoadedRun | None = None
        self._predictor: Any = None

    @classmethod
    def from_run(cls, path: str | Path, which: str = "best", device: str = "auto") -> OneDet:
        """The trained detector of a run folder (`which`: best, falling back to last) or a checkpoint folder."""
        self = cls.__new__(cls)
        self.preset, self.model_overrides, self._predictor = None, {}, None
        self._load(Path(path), which, device)
        return self

    def _load(self, path: Path, which: str = "best", device: str = "auto") -> None:
        from onedet.checkpoint import load_run

        self._run = load_run(path, which, device=_device(device))
        self.run_dir = path
        self._predictor = None

    @property
    def run(self) -> LoadedRun:
        """The loaded weights (`model`, `config`, `classes`, `category_ids`); an error before training."""
        if self._run is None:
            raise OnedetError(
                f"this OneDet({self.preset!r}) has no trained weights: call .train(...) or use OneDet.from_run(...)"
            )
        return self._run

    @property
    def model(self) -> Any:
        """The trained `onedet.model.detector.Detector` (eval mode)."""
        return self.run.model

    @property
    def classes(self) -> list[str]:
        return list(self.run.classes)

    def train(self, data: str | Path, out: str | Path = "runs/onedet", epochs: int = 50, **config: Any) -> Any:
        """Train on the store `data` into the run folder `out`; returns `TrainResult(run, metrics)`.

        `config` takes any other `TrainConfig` field (`batch_size`, `finetune`, `lr`, `pretrained`, ...). A new
        detector trains from its preset's backbone weights; a detector from `from_run` can only continue its
        run (`resume=True`, `out` its run folder), as the trainer does not start from a run's weights. After
        training, this object holds the run's best weights.
        """
        from onedet.train import TrainConfig
        from onedet.train import train as run_training

        if "preset" in config:
            raise TypeError("the preset is OneDet's: OneDet(preset, ...).train(...)")
        if self.preset is None and not config.get("resume"):
            raise OnedetError(
                f"{self.run_dir}: a detector loaded from a run can only continue it: "
                f".train(data, out=<its run folder>, resume=True)"
            )
        model = {**self.model_overrides, **config.pop("model", {})}
        cfg = TrainConfig(
            data=Path(data), out=Path(out), epochs=epochs, preset=self.preset or "base", model=model, **config
        )
        result = run_training(cfg)
        self._load(Path(result.run), device=cfg.device)
        return result

    def distill(self, data: str | Path, student: str, out: str | Path = "runs/onedet-student", **config: Any) -> OneDet:
        """Distil this trained detector (the teacher) into `student` (a preset, or `"teacher:depth=N"` for a
        student derived from its own blocks, `"teacher:depth=6,embed_dim=192,neck_channels=96"` for a narrower one)
        on the store `data`; returns the student as a `OneDet`.

        `config` takes any other `DistillConfig` field (`epochs`, `unlabeled`, `kd_feat_weight`, ...).
        """
        from onedet.train.distill import DistillConfig, distill

        if self.run_dir is None:
            raise OnedetError(f"this OneDet({self.preset!r}) has no trained weights to teach: use OneDet.from_run(...)")
        device = config.get("device", "auto")
        cfg = DistillConfig(data=Path(data), out=Path(out), teacher=Path(self.run_dir), student=student, **config)
        result = distill(cfg)
        return OneDet.from_run(result.run, device=device)

    def predict(self, images: Any, threshold: float | None = PredictOptions.threshold) -> Detections | list[Detections]:
        """One image (uint8 [H, W, 3] RGB array, Pillow image or path) -> `Detections`; a list -> a list.

        `threshold` is the minimum score for every class; by default each class has its own, the score where its F1
        was best on the val split in training (0.3 for a class, or a model, without one)."""
        from onedet.predict import predict

        return predict(self._loaded_predictor(), images, threshold=threshold)

    def predict_video(
        self,
        video: str | Path,
        out: str | Path | None = None,
        threshold: float | None = PredictOptions.threshold,
        track: bool = PredictOptions.track,
        max_frames: int | None = PredictOptions.max_frames,
    ) -> list[Detections]:
        """One `Detections` per frame of a video file or stream URL (`rtsp://...`: Ctrl-C stops it, keeping what was
        done); with `out` (e.g. `annotated.mp4`) the frames with their detections drawn are written there
        (`onedet.predict.predict_video`; needs PyAV: `onedet[video]`). With `track`, objects keep an id from frame
        to frame (`Detections.track_ids`; ByteTrack: `onedet[track]`); `max_frames` stops after that many."""
        from onedet.predict import predict_video

        return predict_video(
            self._loaded_predictor(), video, out, threshold=threshold, track=track, max_frames=max_frames
        )

    def _loaded_predictor(self) -> Any:
        """The PyTorch predictor of the loaded weights, built on first use (`evaluate(record=True)` resets it)."""
        from onedet.predict import load_predictor

        if self._predictor is None:
            self._predictor = load_predictor(self.run)
        return self._predictor

    def evaluate(
        self,
        data: Any,
        batch_size: int = EvalOptions.batch_size,
        plots: str | Path | None = None,
        record: bool = EvalOptions.record,
    ) -> dict:
        """COCO metrics on a store split (a path such as `store/val`, or a `Store`), with the precision-recall curves
        (`pr`) and the confusion matrix (`confusion`); `plots`: a folder to draw them into; `record`: make each
        class's best-F1 score on this split its own score threshold, in the checkpoint and for `predict`."""
        from onedet.evaluate import evaluate_run

        metrics = evaluate_run(self.run, data, batch_size=batch_size, plots=plots, record=record)
        if record:
            self._run = self.run._replace(score_thresholds=metrics["recorded"]["score_thresholds"])
            self._predictor = None
        return metrics

    def export(
        self,
        out: str | Path = "model.onnx",
        int8: bool = False,
        half: bool = False,
        calibration: str | Path | None = None,
        **options: Any,
    ) -> list[Path]:
        """One ONNX file from pixels to boxes (and its int8/fp16 variants); see `onedet.export.export`."""
        from onedet.export import export

        return export(self.run, out, int8=int8, half=half, calibration=calibration, **options)

    def __repr__(self) -> str:
        if self._run is None:
            return f"OneDet({self.preset!r}, untrained)"
        return f"OneDet({self.run_dir}, {len(self.run.classes)} classes)"
