"""What a training option is worth in AP: the same model trained with each recipe (a set of `TrainConfig` fields)
for the same epochs and seeds, measured on the test split (val when there is none), with each recipe's mean AP
against the first recipe's, measured alike.

    python benchmarks/recipes.py [--dataset bccd|aquarium] [--image-size 320] [--preset tiny]
        [--model window_size=10 strides=4,8,16,32] [--recipes none mosaic=1] [--epochs 30] [--seeds 0 1]
        [--eval-every 1] [--threads 2] [--work DIR] [--train-only]

A recipe is `none` (the defaults) or `NAME=VALUE,...` with NAME a `TrainConfig` field (`mosaic=1,close_mosaic=5`).
Models train from random weights (`pretrained=None`: nothing can be downloaded here) with full fine-tuning and the
settings of benchmarks/distill.py's runs (lr 1e-3 everywhere, batch 8). A run folder that already holds
`metrics.json` is reused, so several `--train-only` processes (one per recipe or seed, one thread each) can share
the machine and a last call without it prints the table.
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
DATASETS = {"bccd": "bccd", "aquarium": "aquarium/aquarium_pretrain"}


def _value(text: str) -> Any:
    if "," in text:  # a tuple field of --model, e.g. strides=4,8,16,32 (recipes split on commas before this)
        return tuple(_value(item) for item in text.split(","))
    words = {"none": None, "true": True, "false": False}
    if text.lower() in words:
        return words[text.lower()]
    try:
        return int(text)
    except ValueError:
        return float(text)


def _recipe(name: str) -> dict[str, Any]:
    from onedet.train import TrainConfig

    if name == "none":
        return {}
    known = {f.name for f in fields(TrainConfig)}
    recipe = {}
    for item in name.split(","):
        key, sep, value = item.partition("=")
        if not sep or key not in known:
            raise SystemExit(f"recipe {name!r}: {item!r} is not NAME=VALUE with NAME a TrainConfig field")
        recipe[key] = _value(value)
    return recipe


def _store(args: argparse.Namespace) -> Path:
    from onedet.data.prepare import prepare

    store = args.work / f"{args.dataset}_{args.image_size}"
    if not (store / "train" / "meta.json").is_file():
        source = SHARED / DATASETS[args.dataset]
        if not source.is_dir():
            raise SystemExit(f"{source} not found")
        prepare(source, store, image_size=args.image_size, progress=False)
    return store


def _train(args: argparse.Namespace, store: Path, recipe: str, seed: int) -> Path:
    from onedet.train import TrainConfig, train

    run = args.work / f"{args.preset}_{re.sub(r'[^A-Za-z0-9.]+', '-', recipe)}" / f"seed{seed}"
    if not (run / "metrics.json").is_file():
        print(f"{args.preset} {args.model}, {recipe}, seed {seed}: {args.epochs} epochs", flush=True)
        model = dict(item.split("=", 1) for item in args.model)
        cfg = TrainConfig(
            data=store,
            out=run,
            preset=args.preset,
            model={"image_size": args.image_size, **{k: _value(v) for k, v in model.items()}},
            pretrained=None,
            finetune="full",
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=1e-3,
            backbone_lr_scale=1.0,
            progress=False,
            workers=args.threads,
            seed=seed,
            eval_every=args.eval_every,
            **_recipe(recipe),
        )
        train(cfg)
    return run


def _minutes(run: Path) -> float:
    """Minutes of training steps (evaluation left out), from the run's metrics.csv."""
    import csv

    with open(run / "metrics.csv") as f:
        return sum(float(row["seconds"]) for row in csv.DictReader(f)) / 60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="bccd")
    parser.add_argument("--image-size", type=int, default=320)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--model", nargs="*", default=["window_size=10"], help="ModelConfig overrides, NAME=VALUE")
    parser.add_argument("--recipes", nargs="+", default=["none", "mosaic=1"])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-every", type=int, default=1, help="val AP every N epochs (and after the last)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "onedet-bench-recipes")
    parser.add_argument("--train-only", action="store_true", help="train the missing runs, measure nothing")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for recipe in args.recipes:
        _recipe(recipe)  # a misspelt field fails before hours of training
    store = _store(args)
    runs = {(r, s): _train(args, store, r, s) for r in args.recipes for s in args.seeds}
    if args.train_only:
        return
    from onedet.evaluate import evaluate_run

    split = store / ("test" if (store / "test" / "meta.json").is_file() else "val")
    rows = []
    for recipe in args.recipes:
        metrics = [evaluate_run(runs[recipe, s], split, batch_size=args.batch_size) for s in args.seeds]
        aps = [float(m["AP"]) for m in metrics]
        rows.append((recipe, aps, statistics.mean(float(m["AP50"]) for m in metrics), runs[recipe, args.seeds[0]]))
    base = statistics.mean(rows[0][1])
    print(
        f"\n{args.preset} {' '.join(args.model)}, {args.dataset} at {args.image_size} px, {args.epochs} epochs, "
        f"{split.name} split, seeds {' '.join(map(str, args.seeds))}\n"
    )
    print(
        f"| recipe | AP (mean) | AP per seed | AP50 (mean) | AP / {rows[0][0]} "
        f"| training minutes (seed {args.seeds[0]}) |"
    )
    print("| --- | ---: | --- | ---: | ---: | ---: |")
    for recipe, aps, ap50, run in rows:
        mean = statistics.mean(aps)
        per_seed = " / ".join(f"{a:.3f}" for a in aps)
        print(f"| {recipe} | {mean:.3f} | {per_seed} | {ap50:.3f} | {mean / base:.3f} | {_minutes(run):.1f} |")


if __name__ == "__main__":
    main()
