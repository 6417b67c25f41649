"""Training benchmarks on the CPU.

1. `throughput`: training images per second of the `base` preset at 640 px for each fine-tuning mode
   (frozen backbone in fp32, with only the backbone in bf16 autocast, and with the default autocast; LoRA; full;
   cached features in fp32 and with the default autocast), a few real trainer steps
   each (loader, augmentation, forward, loss, backward, AdamW, EMA) after one warm-up step, with ratios to the
   frozen fp32 baseline measured in the same process. Weights are random (`pretrained=None`: nothing can be
   downloaded here); the speed does not depend on them. The cache's one-off cost is reported separately.
2. `epochs`: whole epochs of `base` at 640 px on a small synthetic store (training steps, then the evaluation on
   val and the checkpoint, as `onedet train` runs them) with and without `--cache-features`, the default autocast
   in both; the median over epochs 2.. (the first warms up), and the whole runs' wall time with the cache's
   one-off cost.
3. `finetune`: a real fine-tune of the `small` preset on ../shared/data/bccd (or aquarium) for a fixed wall-clock
   budget, from random weights (`--finetune full`: no pretrained weights here), evaluated on the validation split
   every epoch; the run folder (with its loss/mAP curve, curves.png) is kept under `--work` (the int8-vs-fp32
   comparison of benchmarks/inference.py reads it), and `--plot PATH` copies the curve there (the committed
   benchmarks/train_<dataset>_small.png are such copies; without it, a run leaves the repository untouched).

    python benchmarks/train.py throughput [--steps 3] [--batch-size 2]
    python benchmarks/train.py epochs [--images 50] [--epochs 3]
    python benchmarks/train.py finetune [--dataset bccd|aquarium] [--minutes 15] [--image-size 320] [--threads 2]
        [--plot PNG]
    python benchmarks/train.py denormals --run quickstart/run [--steps 6] [--rounds 3]
    python benchmarks/train.py quickstart [--steps 8] [--minutes 8]

4. `denormals`: training steps of a *trained* run (default: the quickstart's), continuing from its last weights on
   its own store, with the CPU flushing denormal floats to zero (onedet's default, `onedet/cpu.py`) and without
   (`ONEDET_KEEP_DENORMALS=1`). The flag is inherited by threads at creation, so each measurement is a fresh
   process; the two settings alternate for `--rounds` rounds. A fresh model's steps are timed too, for scale.

5. `quickstart`: the quickstart's model against the cheaper and cheaper variants that led to it, from the `tiny`
   preset with 8-pixel patches at batch 16 (the quickstart until session 10): training images per second of each
   (real trainer steps on the quickstart's synthetic store, in one process, ratios to the first row), and with
   `--minutes M` a whole wall-clock-budgeted training of each, as the quickstart runs it, with its val AP50/AP.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from onedet.config import ModelConfig
from onedet.options import add_nested_arguments, nested_values
from onedet.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
DATASETS = {"bccd": "bccd", "aquarium": "aquarium/aquarium_pretrain"}


def _synthetic_store(folder: Path, size: int, num_images: int) -> Path:
    from onedet.data.prepare import prepare
    from onedet.data.synthetic import make_synthetic

    make_synthetic(folder / "source", num_images=num_images, image_size=size, seed=0)
    prepare(folder / "source", folder / "store", image_size=size, progress=False)
    return folder / "store"


class _BackboneOnlyBf16(torch.nn.Module):
    """The detector with bf16 autocast around its backbone (`forward_features`) alone: the neck and head in fp32."""

    def __init__(self, detector: torch.nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, images: torch.Tensor) -> Any:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            features = self.detector.forward_features(images)
        return self.detector.forward_head(features)


def _time_steps(
    cfg: TrainConfig, steps: int, weights: dict[str, torch.Tensor] | None = None, backbone_only_bf16: bool = False
) -> tuple[float, float, float]:
    """(median wall seconds, median process CPU seconds per step, trainer set-up wall seconds) over `steps` steps
    after one warm-up step, from `weights` when given; with `backbone_only_bf16`, the step's forward is
    `_BackboneOnlyBf16` (through the trainer's `build_forward` seam). CPU seconds count every thread of the process
    (the loader's included)."""
    from onedet.train.loop import Trainer

    class BackboneOnlyTrainer(Trainer):
        def build_forward(self) -> torch.nn.Module:
            return _BackboneOnlyBf16(self.detector)

    tick = time.perf_counter()
    trainer = (BackboneOnlyTrainer if backbone_only_bf16 else Trainer)(cfg)
    setup = time.perf_counter() - tick
    try:
        if weights is not None:
            trainer.detector.load_state_dict(weights, strict=False)
        trainer.forward.train()
        batches = iter(trainer.loader)
        trainer._step(next(batches))  # warm-up: allocator, oneDNN kernels
        walls, cpus = [], []
        for _ in range(steps):
            batch = next(batches)
            tick, cpu = time.perf_counter(), time.process_time()
            trainer._step(batch)
            walls.append(time.perf_counter() - tick)
            cpus.append(time.process_time() - cpu)
        batches.close()  # stops the loader's prefetch thread
    finally:
        trainer.close()
    return statistics.median(walls), statistics.median(cpus), setup


def throughput(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # Enough images for warm-up + timed steps in one epoch.
        store = _synthetic_store(tmp, args.image_size, num_images=(args.steps + 2) * args.batch_size * 5 // 4 + 2)
        common = dict(
            data=store,
            preset="base",
            pretrained=None,
            batch_size=args.batch_size,
            progress=False,
            epochs=1,
            model=nested_values(args, "model"),
        )
        # name: (TrainConfig options, whether only the backbone runs under bf16 autocast)
        modes = {
            "frozen fp32": (dict(finetune="frozen", amp="off"), False),
            "frozen, bf16 backbone only": (dict(finetune="frozen", amp="auto"), True),
            "frozen (default)": (dict(finetune="frozen", amp="auto"), False),
            "lora r8": (dict(finetune="lora", lora_rank=8, amp="auto"), False),
            "full": (dict(finetune="full", amp="auto"), False),
            "cached fp32": (dict(finetune="frozen", amp="off", cache_features=True), False),
            "cached (default)": (dict(finetune="frozen", amp="auto", cache_features=True), False),
        }
        if args.modes:
            keep = {*args.modes, "frozen fp32", "frozen (default)"}  # the two rows the ratios are to
            modes = {name: mode for name, mode in modes.items() if name in keep}
        rows = []
        for name, (options, backbone_only) in modes.items():
            cfg = TrainConfig(out=tmp / name.replace(" ", "_").replace(",", ""), **common, **options)
            wall, cpu, setup = _time_steps(cfg, args.steps, backbone_only_bf16=backbone_only)
            rows.append((name, args.batch_size / wall, args.batch_size / cpu, setup))
            print(f"  {name}: {wall:.2f} s/step wall, {cpu:.2f} CPU s/step", flush=True)
    from onedet.train.amp import plan as amp_plan

    default = amp_plan("auto", torch.device("cpu"), backbone_frozen=True)
    print(f"\nbase preset, {args.image_size} px, batch {args.batch_size}, {args.threads} threads, random weights")
    print(f"default autocast on this CPU with a frozen backbone: {default}")
    # x fp32: ratio to the frozen fp32 step; x default: to the default frozen step (amp=auto), which is what a
    # user without --cache-features gets.
    print(f"{'mode':<28} {'img/s wall':>10} {'x fp32':>7} {'x default':>9} {'img/CPU-s':>10} {'x':>6} {'set-up s':>9}")
    by_name = {row[0]: row for row in rows}
    base_wall, base_cpu, default_wall = rows[0][1], rows[0][2], by_name["frozen (default)"][1]
    for name, wall_ips, cpu_ips, setup in rows:
        print(
            f"{name:<28} {wall_ips:>10.3f} {wall_ips / base_wall:>7.2f} {wall_ips / default_wall:>9.2f} "
            f"{cpu_ips:>10.3f} {cpu_ips / base_cpu:>6.2f} {setup:>9.1f}"
        )
    if "cached (default)" in by_name:
        cache_setup = by_name["cached (default)"][3] - by_name["frozen (default)"][3]
        print(
            f"(cached features: the set-up includes computing the cache, about {cache_setup:.1f} s more than without)"
        )


def epochs(args: argparse.Namespace) -> None:
    """Whole epochs (training steps, then evaluation on val and the checkpoints) with and without the cache."""
    from onedet.data.store import Store
    from onedet.train import train
    from onedet.train.logging import read_metrics

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store = _synthetic_store(tmp, args.image_size, num_images=args.images)
        n_train, n_val = (len(Store(store / split)) for split in ("train", "val"))
        rows = {}
        for name, cache in (("frozen (default)", False), ("cached (default)", True)):
            run = tmp / name.split()[0]
            cfg = TrainConfig(
                data=store, out=run, preset="base", pretrained=None, batch_size=args.batch_size, progress=False,
                epochs=args.epochs, cache_features=cache, model=nested_values(args, "model"),
            )  # fmt: skip
            tick = time.perf_counter()
            train(cfg)
            total = time.perf_counter() - tick
            metrics = read_metrics(run)[1:]  # the first epoch warms up (oneDNN kernels, allocator)
            train_s = statistics.median(r["seconds"] for r in metrics)
            eval_s = statistics.median(r["eval_seconds"] for r in metrics)
            save_s = statistics.median(r["checkpoint_seconds"] for r in metrics)
            rows[name] = (train_s, eval_s, save_s, total)
            print(f"  {name}: {train_s:.1f} s training + {eval_s:.1f} s evaluation + {save_s:.1f} s checkpoints")
    print(
        f"\nbase preset, {args.image_size} px, batch {args.batch_size}, {args.threads} threads, random weights, "
        f"{n_train} train / {n_val} val images, median of epochs 2..{args.epochs}"
    )
    print("| mode | training s | evaluation s | checkpoints s | epoch s | x default (epoch) | x default (training) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    base_train, base_eval, base_save, _ = rows["frozen (default)"]
    for name, (train_s, eval_s, save_s, _) in rows.items():
        epoch_s = train_s + eval_s + save_s
        print(
            f"| {name} | {train_s:.2f} | {eval_s:.2f} | {save_s:.2f} | {epoch_s:.2f} | "
            f"{(base_train + base_eval + base_save) / epoch_s:.2f} | {base_train / train_s:.2f} |"
        )
    print(
        f"(whole runs, set-up and final evaluation included: {rows['frozen (default)'][3]:.0f} s without the cache, "
        f"{rows['cached (default)'][3]:.0f} s with it, computing the cache once included)"
    )


def finetune(args: argparse.Namespace) -> None:
    from onedet.data.prepare import prepare
    from onedet.train import train
    from onedet.train.logging import read_metrics

    torch.set_num_threads(args.threads)
    source = SHARED / DATASETS[args.dataset]
    if not source.is_dir():
        raise SystemExit(f"{source} not found")
    work = Path(args.work)
    store = work / f"{args.dataset}_{args.image_size}"
    if not (store / "val" / "meta.json").is_file():
        prepare(source, store, image_size=args.image_size, progress=False)
    run = work / f"run_small_{args.dataset}"
    shutil.rmtree(run, ignore_errors=True)
    cfg = TrainConfig(
        data=store,
        out=run,
        preset="small",
        pretrained=None,
        finetune="full",
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=1e-3,
        backbone_lr_scale=1.0,
        warmup_epochs=1,
        max_minutes=args.minutes,
        progress=False,
    )
    tick = time.perf_counter()
    result = train(cfg)
    minutes = (time.perf_counter() - tick) / 60
    rows = read_metrics(run)
    print(
        f"\nsmall preset, full fine-tune from RANDOM weights, {args.dataset} at {args.image_size} px, "
        f"{args.threads} threads, {minutes:.1f} min wall"
    )
    print(f"{'epoch':>5} {'loss':>8} {'AP':>6} {'AP50':>6} {'img/s':>6}")
    for r in rows:
        print(
            f"{int(r['epoch']):>5} {r['loss']:>8.3f} {r.get('AP', -1):>6.3f} {r.get('AP50', -1):>6.3f} "
            f"{r['images_per_s']:>6.2f}"
        )
    if result.metrics is not None:
        print(f"best checkpoint: AP {result.metrics['AP']:.3f}, AP50 {result.metrics['AP50']:.3f}")
    if args.plot:
        shutil.copy(run / "curves.png", args.plot)
    print(f"curve: {args.plot or run / 'curves.png'}; run folder: {run}")


def _denormal_steps(args: argparse.Namespace) -> None:
    """(child process) Print the median seconds per step of a trainer on `args.run`'s store and weights."""
    from onedet.checkpoint import read_weights

    torch.set_num_threads(args.threads)
    saved = json.loads((Path(args.run) / "train_config.json").read_text())
    weights = read_weights(Path(args.run) / "weights" / "last") if args.trained else None
    with tempfile.TemporaryDirectory() as tmp:
        keep = {k: saved[k] for k in ("data", "preset", "pretrained", "finetune", "batch_size", "lr", "model")}
        cfg = TrainConfig(**{**keep, "data": Path(keep["data"])}, out=Path(tmp) / "run", epochs=1, progress=False)
        wall, _, _ = _time_steps(cfg, args.steps, weights)
    print(f"STEP {wall:.4f}")


def denormals(args: argparse.Namespace) -> None:
    if args.child:
        _denormal_steps(args)
        return
    run = Path(args.run)
    if not (run / "weights" / "last").is_dir():
        raise SystemExit(f"{run}: no trained run (run `make quickstart` first)")
    variants = {
        "trained weights, denormals flushed (default)": ({}, True),
        "trained weights, denormals kept": ({"ONEDET_KEEP_DENORMALS": "1"}, True),
        "fresh weights, denormals flushed": ({}, False),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, (env, trained) in variants.items():
            cmd = [sys.executable, __file__, "denormals", "--child", "--run", str(run), "--steps", str(args.steps)]
            cmd += ["--threads", str(args.threads)] + (["--trained"] if trained else [])
            out = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, check=True).stdout
            times[name].append(float(out.split("STEP")[-1]))
            print(f"  {name}: {times[name][-1]:.3f} s/step", flush=True)
    base = statistics.median(times["trained weights, denormals flushed (default)"])
    print(f"\ntraining steps on {run} ({args.threads} threads, median of {args.rounds} processes x {args.steps} steps)")
    print("| variant | s/step | ratio to default |")
    print("| --- | ---: | ---: |")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.3f} | {statistics.median(values) / base:.2f} |")


# name: (ModelConfig overrides of the quickstart's `tiny`, batch size); each row adds one change to the one above.
_SHALLOW = {"patch_size": 8, "depth": 4, "global_blocks": (1, 3), "taps": (2, 3), "mlp_ratio": 2.0}
QUICKSTART_VARIANTS: dict[str, tuple[dict[str, Any], int]] = {
    "tiny, 8-px patches, batch 16 (until session 10)": ({"patch_size": 8}, 16),
    "+ 4 blocks, MLP ratio 2": (_SHALLOW, 16),
    "+ batch 8": (_SHALLOW, 8),
}


def quickstart(args: argparse.Namespace) -> None:
    """The quickstart's model and batch size against the variants before it: img/s, and val AP after `--minutes`."""
    import dataclasses

    from onedet.evaluate import evaluate_run
    from onedet.quickstart import IMAGE_SIZE, NUM_IMAGES, QUICKSTART_BATCH_SIZE, QUICKSTART_MODEL, quickstart_config
    from onedet.train import train
    from onedet.train.logging import read_metrics

    torch.set_num_threads(args.threads)
    variants = {
        **QUICKSTART_VARIANTS,
        "+ width 128, 2 heads (the quickstart)": (QUICKSTART_MODEL, QUICKSTART_BATCH_SIZE),
    }
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store = _synthetic_store(tmp, IMAGE_SIZE, num_images=NUM_IMAGES)
        for i, (name, (model, batch_size)) in enumerate(variants.items()):
            cfg = quickstart_config(store, tmp / f"run{i}", progress=False)  # fp32, as the quickstart
            cfg = dataclasses.replace(cfg, model=dict(model), batch_size=batch_size)
            wall, _, _ = _time_steps(dataclasses.replace(cfg, out=tmp / f"steps{i}", max_minutes=None), args.steps)
            row = [name, batch_size / wall]
            if args.minutes:
                train(dataclasses.replace(cfg, max_minutes=args.minutes))
                metrics = evaluate_run(cfg.out, store / "val", batch_size=16)
                epochs_done = len(read_metrics(cfg.out))
                row += [epochs_done, metrics["AP50"], metrics["AP"]]
            rows.append(row)
            print(f"  {name}: {row[1]:.1f} img/s" + (f", {row[2]} epochs, AP50 {row[3]:.3f}" if args.minutes else ""))
    print(
        f"\nthe quickstart's synthetic store ({NUM_IMAGES} images, {IMAGE_SIZE} px), {args.threads} threads, "
        f"fp32, median of {args.steps} steps after a warm-up"
        + (f"; whole trainings of {args.minutes:g} min each" if args.minutes else "")
    )
    extra = " | epochs in the budget | val AP50 | val AP" if args.minutes else ""
    print(f"| variant | train img/s | x first row{extra} |")
    print("| --- | ---: | ---:" + (" | ---: | ---: | ---:" if args.minutes else "") + " |")
    for name, ips, *rest in rows:
        tail = f" | {rest[0]} | {rest[1]:.3f} | {rest[2]:.3f}" if rest else ""
        print(f"| {name} | {ips:.1f} | {ips / rows[0][1]:.2f}{tail} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="part", required=True)
    p = sub.add_parser("throughput")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--image-size", type=int, default=640)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--modes", nargs="+", help="only these rows (and the two baseline rows), by name")
    add_nested_arguments(p, "model", ModelConfig)  # --model.FIELD=VALUE, for every run
    p.set_defaults(func=throughput)
    p = sub.add_parser("epochs")
    p.add_argument("--images", type=int, default=50, help="synthetic images (a fifth of them val)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--image-size", type=int, default=640)
    p.add_argument("--threads", type=int, default=2)
    add_nested_arguments(p, "model", ModelConfig)
    p.set_defaults(func=epochs)
    p = sub.add_parser("finetune")
    p.add_argument("--dataset", choices=sorted(DATASETS), default="bccd")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--minutes", type=float, default=15.0)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--image-size", type=int, default=320)
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "onedet-bench-train"))
    p.add_argument("--plot", help="also copy the run's loss/mAP curve here (e.g. benchmarks/train_bccd_small.png)")
    p.set_defaults(func=finetune)
    p = sub.add_parser("denormals")
    p.add_argument("--run", default=str(ROOT / "quickstart" / "run"))
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--trained", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=denormals)
    p = sub.add_parser("quickstart")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--minutes", type=float, help="also train each variant for this wall-clock budget (8: the quickstart's)"
    )
    p.set_defaults(func=quickstart)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
