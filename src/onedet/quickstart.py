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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from onedet.train import TrainConfig

IMAGE_SIZE = 128
NUM_IMAGES = 400


def _say(text: str) -> None:
    print(f"[quickstart] {text}", file=sys.stderr, flush=True)


# The `tiny` preset made cheaper to train, because the budget is wall-clock time on whatever CPU runs it: 8-pixel
# patches (a 16x16 grid at 128 px, which from random weights learned much faster per minute than 16-pixel ones),
# and 4 blocks of width 128 with an MLP ratio of 2 instead of 6 of width 192 with 4. On a CPU without native bf16
# the preset fitted too few epochs in the budget to reach the goal; this model trains faster and learns more per
# epoch (BENCHMARKS.md, Training (3), "Session 10").
QUICKSTART_MODEL: dict[str, Any] = {
    "patch_size": 8,
    "depth": 4,
    "embed_dim": 128,
    "num_heads": 2,
    "mlp_ratio": 2.0,
    "global_blocks": (1, 3),
    "taps": (2, 3),
}
QUICKSTART_BATCH_SIZE = 8
"""Images per step: at 8 rather than 16, twice the updates per epoch learned more per epoch, and each image cost
no more."""


def quickstart_config(
    store: Path | str,
    run: Path | str,
    *,
    epochs: int = 100,
    max_minutes: float | None = 8.0,
    progress: bool = True,
) -> TrainConfig:
    """The quickstart's training run: `tiny` with `QUICKSTART_MODEL` from random weights, everything trained.

    fp32 on every CPU. Where the CPU has native bf16 (AVX512-BF16 / AMX), bf16 autocast used to buy the quickstart
    more epochs; this model is expected to fit the schedule's 100 epochs in fp32 there (not measured on such a
    CPU; BENCHMARKS.md, Training (3)), and bf16 learns a little less per epoch from random weights.
    """
    from onedet.train import TrainConfig

    return TrainConfig(
        data=Path(store),
        out=Path(run),
        preset="tiny",
        pretrained=None,
        finetune="full",
        epochs=epochs,
        batch_size=QUICKSTART_BATCH_SIZE,
        lr=2e-3,
        backbone_lr_scale=1.0,  # random weights: the backbone learns as fast as the rest
        model=dict(QUICKSTART_MODEL),
        warmup_epochs=1.0,
        amp="off",
        eval_every=5,
        max_minutes=max_minutes,
        device="cpu",
        progress=progress,
    )


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
    from onedet.train import train

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
    m = QUICKSTART_MODEL
    _say(
        f"training the tiny preset ({m['depth']} blocks of width {m['embed_dim']}, {m['patch_size']}-pixel patches) "
        f"on the CPU into {run} (at most {epochs} epochs, {max_minutes} minutes)"
    )
    train(quickstart_config(store, run, epochs=epochs, max_minutes=max_minutes, progress=progress))

    metrics = evaluate_run(run, store / "val", batch_size=16)
    print(format_metrics(metrics))

    images = sorted((data / "val").glob("*.png"))[:6]
    try:
        from onedet.predict import predict_files

        predict_files(run, images, out / "predictions")  # each class from its own best-F1 score on val
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
