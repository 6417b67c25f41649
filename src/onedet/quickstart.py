"""`onedet quickstart` (what `make quickstart` runs): the whole loop on the built-in synthetic shapes, on the CPU.

It writes the synthetic dataset, prepares a store, trains the `tiny` preset from random weights (there are no
pretrained weights for it, so everything trains: `--finetune full`), evaluates it, predicts on a few validation
images (annotated images in `OUT/predictions/`), and exports ONNX. Every step is a public API call, the same
ones the README shows, so this file doubles as an example. Training has a wall-clock budget (`max_minutes`,
8 by default, for the whole quickstart to stay under 10 minutes on a 2-core CPU): the trainer fits its
cosine schedule into it at the pace it measures, so a slow machine trains fewer epochs rather than overrun.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Any

IMAGE_SIZE = 128
NUM_IMAGES = 400


def _say(text: str) -> None:
    print(f"[quickstart] {text}", file=sys.stderr, flush=True)


def quickstart(
    out: Path | str = Path("quickstart"),
    *,
    num_images: int = NUM_IMAGES,
    epochs: int = 100,
    max_minutes: float | None = 8.0,
    export_onnx: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the quickstart into `out` and return the validation metrics of the trained model."""
    from onedet.data.prepare import prepare
    from onedet.data.store import format_summary, summarize
    from onedet.data.synthetic import make_synthetic
    from onedet.evaluate import evaluate_run, format_metrics
    from onedet.train import TrainConfig, train
    from onedet.train.amp import cpu_bf16_supported

    start = time.perf_counter()
    out = Path(out)
    data, store, run = out / "data", out / "store", out / "run"
    if not (data / "annotations").is_dir():
        _say(f"writing {num_images} synthetic images to {data}")
        make_synthetic(data, num_images=num_images, image_size=IMAGE_SIZE, seed=0)
    if not (store / "train" / "meta.json").is_file() or not (store / "val" / "meta.json").is_file():
        _say(f"preparing the store {store}")
        prepare(data, store, image_size=IMAGE_SIZE, progress=progress)
    print(format_summary(summarize(store)))

    if run.exists():
        shutil.rmtree(run)  # a rerun starts over
    # bf16 autocast where the CPU has native bf16: from random weights it learns a little less per epoch than
    # fp32 but runs more epochs in the budget, and ends higher (BENCHMARKS.md, Training). Elsewhere bf16 would be
    # emulated, i.e. slower: fp32 there.
    amp = "bf16" if cpu_bf16_supported() else "off"
    _say(
        f"training the tiny preset on the CPU ({'bf16 autocast' if amp == 'bf16' else 'fp32'}) into {run} "
        f"(at most {epochs} epochs, {max_minutes} minutes)"
    )
    train(
        TrainConfig(
            data=store,
            out=run,
            preset="tiny",
            pretrained=None,
            finetune="full",
            epochs=epochs,
            batch_size=16,
            lr=2e-3,
            backbone_lr_scale=1.0,  # random weights: the backbone learns as fast as the rest
            # 8-pixel patches: a 16x16 grid at 128 px instead of 8x8. From random weights this learned much faster
            # per minute on 2 cores (BENCHMARKS.md, Training).
            model={"patch_size": 8},
            warmup_epochs=1.0,
            amp=amp,
            eval_every=5,
            max_minutes=max_minutes,
            device="cpu",
            progress=progress,
        )
    )

    metrics = evaluate_run(run, store / "val", batch_size=16)
    print(format_metrics(metrics))

    images = sorted((data / "val").glob("*.png"))[:6]
    try:
        from onedet.predict import predict_files

        predict_files(run, images, out / "predictions", threshold=0.4)
        _say(f"annotated predictions of {len(images)} validation images in {out / 'predictions'}")
    except ImportError:
        _say("onedet.predict is not available: skipping predictions")

    if export_onnx:
        try:
            from onedet.export import export
        except ImportError:
            _say("onedet.export is not available: skipping the ONNX export")
        else:
            for path in export(run, out / "model.onnx"):
                _say(f"exported {path}")

    minutes = (time.perf_counter() - start) / 60
    verdict = "reached" if metrics["AP50"] >= 0.9 else "NOT reached"
    print(
        f"\nquickstart done in {minutes:.1f} min: validation AP50 = {metrics['AP50']:.3f} "
        f"(AP = {metrics['AP']:.3f}); the goal AP50 >= 0.9 was {verdict}.\n"
        f"run folder: {run} (weights/best, metrics.csv, curves.png, pr.png, predictions.png)"
    )
    return metrics
