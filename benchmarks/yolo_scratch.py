"""onedet against Ultralytics YOLO, both trained from random weights on the same images: test AP and training time.

    # Ultralytics is AGPL and not a dependency: install it outside the project, then run with it on the path
    .venv/bin/pip install --target /tmp/ultra --no-deps ultralytics ultralytics-thop py-cpuinfo \
        opencv-python-headless polars
    YOLO_OFFLINE=1 PYTHONPATH=/tmp/ultra .venv/bin/python benchmarks/yolo_scratch.py --work DIR \
        [--yolo yolo11n yolo26n] [--epochs 80] [--seeds 0] [--threads 1] [--train-only] [--onedet RUN ...]

Both sides see the same pixels and boxes: the YOLO dataset is written from the onedet store that
benchmarks/recipes.py prepares (`DIR/bccd_320`, letterboxed 320 x 320 images, boxes as prepare kept them), so
neither library's reader or letterbox differs. Each trains with its own recipe (Ultralytics: its default
augmentation, mosaic included, SGD/AdamW "auto", batch 8; onedet: benchmarks/recipes.py's full fine-tuning, lr
1e-3, batch 8) for the same number of epochs. Both are scored by onedet's evaluator (faster-coco-eval, COCO AP)
on the store's test split, boxes mapped back to the original photo's pixels the same way: YOLO's best checkpoint
predicts with `conf=0.001`, `max_det=100` and its NMS (IoU 0.7), onedet's best checkpoint with its top-100.

`--onedet RUN ...` names onedet runs trained by benchmarks/recipes.py on the same store (their AP, their training
minutes from metrics.csv); without them the table has YOLO alone. A YOLO run folder that holds `weights/best.pt`
and `done.json` is reused, so `--train-only` lanes (one per model or seed) can share the machine and a last call
prints the table.

`--latency` adds each model's CPU latency at the store's size: the first seed's files exported to ONNX (YOLO by
Ultralytics' exporter; onedet fp32 and int8 dynamic by `onedet.export.export`), timed round-robin on the test
split's first image (batch 1, onnxruntime, `--latency-threads`, spinning off), as benchmarks/peers.py times them:
a YOLO call is its graph alone on an input prepared beforehand (YOLO11's NMS is outside it and not timed), an
onedet call its whole file, pixels to boxes. `--plot FILE` draws AP against fp32 latency.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from recipes import _minutes as onedet_minutes  # benchmarks/recipes.py: training minutes from metrics.csv


def write_yolo_dataset(store_root: Path, out: Path) -> Path:
    """The store's train/val/test splits as an Ultralytics dataset (PNG images, normalised `class cx cy w h`
    labels, `data.yaml`); written once (`data.yaml` last, so a half-written folder is redone)."""
    from PIL import Image

    from onedet.data.store import Store

    yaml_path = out / "data.yaml"
    if yaml_path.is_file():
        return yaml_path
    splits = [s for s in ("train", "val", "test") if (store_root / s / "meta.json").is_file()]
    classes: list[str] = []
    for split in splits:
        store = Store(store_root / split)
        classes = store.classes
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
        size = store.image_size
        for i in range(len(store)):
            batch = store.read_batch(np.array([i]))
            name = f"{i:05d}"
            Image.fromarray(batch["images"][0].numpy().transpose(1, 2, 0)).save(out / "images" / split / f"{name}.png")
            boxes = batch["boxes_xyxy"][0].numpy()[batch["valid"][0].numpy()] / size
            labels = batch["labels"][0].numpy()[batch["valid"][0].numpy()]
            lines = [
                f"{c} {(b[0] + b[2]) / 2:.6f} {(b[1] + b[3]) / 2:.6f} {b[2] - b[0]:.6f} {b[3] - b[1]:.6f}"
                for c, b in zip(labels, boxes, strict=True)
            ]
            (out / "labels" / split / f"{name}.txt").write_text("".join(line + "\n" for line in lines))
    names = "".join(f"  {i}: {name}\n" for i, name in enumerate(classes))
    yaml_path.write_text(f"path: {out}\ntrain: images/train\nval: images/val\ntest: images/test\nnames:\n{names}")
    return yaml_path


def train_yolo(model_name: str, data: Path, run: Path, epochs: int, seed: int, batch: int, size: int) -> Path:
    """A YOLO model from its yaml (random weights), trained with Ultralytics' defaults; `run/done.json` records
    the wall-clock minutes."""
    if (run / "done.json").is_file():
        return run
    from ultralytics import YOLO

    start = time.perf_counter()
    YOLO(f"{model_name}.yaml").train(
        data=str(data), epochs=epochs, imgsz=size, batch=batch, workers=0, device="cpu", seed=seed,
        deterministic=True, pretrained=False, amp=False, plots=False, project=str(run.parent), name=run.name,
        exist_ok=True, verbose=False,
    )  # fmt: skip
    minutes = (time.perf_counter() - start) / 60
    (run / "done.json").write_text(json.dumps({"minutes": minutes, "epochs": epochs, "seed": seed}))
    return run


def yolo_metrics(run: Path, split: Path) -> dict[str, Any]:
    """COCO metrics of a YOLO run's best checkpoint on a store split, by onedet's evaluator."""
    from ultralytics import YOLO

    from onedet.data.store import Store
    from onedet.evaluate import coco_metrics, ground_truth
    from onedet.model.postprocess import to_original

    store = Store(split)
    model = YOLO(str(run / "weights" / "best.pt"))
    gt, detections, image_ids, sizes = [], [], [], []
    for start in range(0, len(store), 8):
        batch = store.read_batch(np.arange(start, min(start + 8, len(store))))
        images = [np.ascontiguousarray(im.numpy().transpose(1, 2, 0)[:, :, ::-1]) for im in batch["images"]]  # BGR
        results = model.predict(images, imgsz=store.image_size, conf=0.001, max_det=100, verbose=False)
        for i, result in enumerate(results):
            boxes = to_original(
                result.boxes.xyxy[None].float(), batch["scale"][i : i + 1], batch["orig_size"][i : i + 1]
            )
            detections.append(
                {
                    "boxes_xyxy": boxes[0].numpy(),
                    "scores": result.boxes.conf.numpy(),
                    "labels": result.boxes.cls.numpy().astype(np.int64),
                }
            )
            gt.append(ground_truth(batch, i))
            image_ids.append(int(batch["image_id"][i]))
            sizes.append((int(batch["orig_size"][i, 0]), int(batch["orig_size"][i, 1])))
    return coco_metrics(gt, detections, store.classes, store.category_ids, image_ids, sizes)


def yolo_minutes(run: Path) -> float:
    """Minutes of training epochs from Ultralytics' results.csv (its `time` column is cumulative and includes
    each epoch's validation); falls back to done.json's wall-clock."""
    path = run / "results.csv"
    if path.is_file():
        with open(path) as f:
            rows = list(csv.DictReader(f))
        if rows and "time" in rows[-1]:
            return float(rows[-1]["time"]) / 60
    return float(json.loads((run / "done.json").read_text())["minutes"])


def latencies(
    onedet: tuple[str, Path] | None, yolo_runs: dict[str, Path], split: Path, threads: int, repeats: int
) -> dict[str, float]:
    """Median milliseconds per call of each model's exported file (`--latency` in the module docstring), keyed by
    name: onedet's (name, run) as `name` (fp32) and `name int8 dynamic`, each YOLO run as its model's name."""
    from peers import _peer_input, _session  # benchmarks/peers.py: YOLO's input, a session without spinning
    from ultralytics import YOLO

    from onedet.data.store import Store
    from onedet.export import export
    from onedet.runtime import OnnxDetector
    from onedet.timing import time_round_robin

    store = Store(split)
    image = np.ascontiguousarray(store.read_batch(np.array([0]))["images"][0].numpy().transpose(1, 2, 0))
    calls: dict[str, Any] = {}
    if onedet is not None:
        name, run = onedet
        out = run / "bench" / "model.onnx"
        files = sorted(out.parent.glob("*.onnx")) or export(run, out, int8=True)
        for path, key in zip(sorted(files, key=lambda p: len(p.name)), (name, f"{name} int8 dynamic"), strict=False):
            detector = OnnxDetector(path, threads=threads, spinning=False)
            calls[key] = lambda d=detector: d.run_batch(image[None])
    for name, run in yolo_runs.items():
        path = run / "weights" / "best.onnx"
        if not path.is_file():
            YOLO(str(run / "weights" / "best.pt")).export(format="onnx", imgsz=store.image_size)
        session = _session(path, threads)
        feed = _peer_input(session, image)
        calls[name] = lambda s=session, f=feed: s.run(None, f)
    return {name: seconds * 1000 for name, seconds in time_round_robin(calls, repeats).items()}


class Row(NamedTuple):
    """One model's line of the tables: AP per seed, mean AP50, training minutes, mean AP per class and size."""

    name: str
    aps: list[float]
    ap50: float
    minutes: float
    parts: dict[str, float]

    @classmethod
    def of(cls, name: str, metrics: list[dict[str, Any]], minutes: float) -> Row:
        parts = {f"AP {c}": statistics.mean(float(m["per_class"][c]) for m in metrics) for c in metrics[0]["per_class"]}
        parts |= {key: statistics.mean(float(m[key]) for m in metrics) for key in ("APs", "APm", "APl")}
        aps = [float(m["AP"]) for m in metrics]
        return cls(name, aps, statistics.mean(float(m["AP50"]) for m in metrics), minutes, parts)


def plot(rows: list[Row], ms: dict[str, float], out: Path, title: str) -> None:
    """AP (mean over seeds, each seed a small dot) against fp32 latency, one point per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, aps, *_ in rows:  # `ms` is keyed by row name (onedet's fp32 file under the row's)
        if name not in ms:
            continue
        ax.scatter([ms[name]] * len(aps), aps, s=10, color="grey")
        ax.scatter([ms[name]], [statistics.mean(aps)], s=40)
        ax.annotate(name, (ms[name], statistics.mean(aps)), textcoords="offset points", xytext=(5, 5))
    ax.set_xlabel("CPU latency, fp32 ONNX, batch 1 (ms)")
    ax.set_ylabel("test AP")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="holds bccd_320 (benchmarks/recipes.py's store)")
    parser.add_argument("--store", default="bccd_320")
    parser.add_argument("--yolo", nargs="+", default=["yolo11n"])
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--onedet", type=Path, nargs="*", default=[], help="onedet runs on the same store")
    parser.add_argument("--onedet-name", default="onedet", help="the onedet runs' name in the tables")
    parser.add_argument("--train-only", action="store_true")
    parser.add_argument("--latency", action="store_true", help="also time every model's ONNX file")
    parser.add_argument("--latency-threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--plot", type=Path, help="AP against latency (PNG; needs --latency)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    store_root = args.work / args.store
    if not (store_root / "train" / "meta.json").is_file():
        raise SystemExit(f"{store_root}: no store; prepare it with benchmarks/recipes.py --work {args.work}")
    size = json.loads((store_root / "train" / "meta.json").read_text())["image_size"]
    data = write_yolo_dataset(store_root, args.work / f"{args.store}_yolo")
    runs = {
        (m, s): train_yolo(
            m, data, args.work / f"{m}_e{args.epochs}" / f"seed{s}", args.epochs, s, args.batch_size, size
        )
        for m in args.yolo
        for s in args.seeds
    }
    if args.train_only:
        return
    from onedet.evaluate import evaluate_run

    split = store_root / "test"
    rows: list[Row] = []
    if args.onedet:
        metrics = [evaluate_run(run, split, batch_size=args.batch_size) for run in args.onedet]
        minutes = statistics.mean(onedet_minutes(run) for run in args.onedet)
        rows.append(Row.of(args.onedet_name, metrics, minutes))
    for m in args.yolo:
        metrics = [yolo_metrics(runs[m, s], split) for s in args.seeds]
        rows.append(Row.of(m, metrics, statistics.mean(yolo_minutes(runs[m, s]) for s in args.seeds)))
    ms: dict[str, float] = {}
    if args.latency:
        yolo_first = {m: runs[m, args.seeds[0]] for m in args.yolo}
        onedet = (args.onedet_name, args.onedet[0]) if args.onedet else None
        ms = latencies(onedet, yolo_first, split, args.latency_threads, args.repeats)
    base = statistics.mean(rows[0][1])
    print(f"\n{args.store}, {args.epochs} epochs from random weights, test split ({len(rows)} models)\n")
    print(
        f"| model | AP (mean) | AP per seed | AP50 (mean) | AP / {rows[0][0]} | training minutes | fp32 ms | int8 ms |"
    )
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for name, aps, ap50, minutes, _ in rows:
        mean = statistics.mean(aps)
        per_seed = " / ".join(f"{a:.3f}" for a in aps)
        fp32, int8 = ms.get(name), ms.get(f"{name} int8 dynamic")
        cells = " | ".join(f"{t:.1f}" if t is not None else "-" for t in (fp32, int8))
        print(f"| {name} | {mean:.3f} | {per_seed} | {ap50:.3f} | {mean / base:.3f} | {minutes:.1f} | {cells} |")
    keys = [*rows[0].parts]
    print(f"\nper class and per object size, AP (mean over seeds)\n\n| model | {' | '.join(keys)} |")
    print("| --- |" + " ---: |" * len(keys))
    for row in rows:
        print(f"| {row.name} | " + " | ".join(f"{row.parts[k]:.3f}" for k in keys) + " |")
    if ms:
        print(f"\n(latency: batch 1, {args.latency_threads} threads, medians of {args.repeats} round-robin rounds)")
    if args.plot and ms:
        plot(rows, ms, args.plot, f"{args.store}: {args.epochs} epochs from random weights, test AP against latency")
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
