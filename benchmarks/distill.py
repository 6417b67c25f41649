"""Distillation proof driver: a teacher trained on a dataset, then each student x recipe in the same wall-clock
budget, measured on the test split (val when there is none): AP/AP50, onnxruntime fp32 and int8 (dynamic) latency
at batch 1 in this process, and file size, as one table and an AP-vs-latency plot (the latencies of every model
timed together, round-robin).

    python benchmarks/distill.py [--dataset bccd|aquarium|synthetic] [--image-size 320]
        [--teacher RUN | --teacher-preset base --teacher-minutes 120] [--students teacher:depth=6 small]
        [--recipes labels distill distill25] [--minutes 30] [--epochs 100] [--batch-size 8] [--threads 2]
        [--eval-every 1]
        [--work DIR] [--plot PNG] [--curves PNG]

Recipes, each for the same student with the same `--minutes` (the trainer's `--max-minutes`) and epoch cap:

- `labels`: the ground-truth loss alone (every distillation weight 0: the teacher does not run, so a step costs
  what `onedet train`'s does). A derived student still starts from the teacher's blocks: the comparison isolates
  the distillation signals.
- `distill`: distillation (default weights) + labels.
- `distill25`: distillation on every train image, labels on a seeded 25% of them (`label_fraction=0.25`).
- `distill-SIGNAL`, `distill25-SIGNAL`: the same without one signal (its weights 0), SIGNAL one of `scores`
  (kd_cls, kd_aux_cls), `boxes` (kd_box_l1, kd_box_giou), `features` (kd_feat), `pseudo` (pseudo-labels on the
  images without labels): that signal's contribution is the drop from the full recipe.
- `RECIPE+NAME=VALUE,...`: any recipe with `DistillConfig` fields overridden, for tuning (`distill+kd_cls_weight=0.5`).

`--train-only` trains and measures nothing (several such processes can share a machine); `--measure-only` trains
nothing and measures the finished runs among `--seeds`, so recipes may have different numbers of seeds.

`--train-fraction 0.25` gives every run only a seeded quarter of the train split (a store of its own, the val and
test splits whole), while the teacher (`--teacher`) was trained on all of it: what distillation adds when the
teacher knows more than the student's labels teach, as a teacher fine-tuned from pretrained weights would.

`--seeds 0 1 2` repeats every student run with those seeds (the loader order, augmentation, the 25% subset and a
non-derived student's initialisation), so a difference can be compared with the spread between seeds.

Teachers and students train from random weights (`pretrained=None`: nothing can be downloaded here), with full
fine-tuning. A run folder that already holds `metrics.json` is reused, so an interrupted sweep continues (delete
the folder to re-run one). Latency: one image (a BCCD photo when ../shared/data is present) through the exported
end-to-end graph, `--threads` intra-op threads, medians of `--repeats` round-robin runs with the eager model.
"""

from __future__ import annotations

import argparse
import random
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

# benchmarks/inference.py (scripts run with benchmarks/ on sys.path)
from inference import _evaluate_onnx, _image, _time_variants

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
DATASETS = {"bccd": "bccd", "aquarium": "aquarium/aquarium_pretrain"}
SIGNALS: dict[str, tuple[str, ...]] = {  # each signal of the issue, as the weights that make it
    "scores": ("kd_cls_weight", "kd_aux_cls_weight"),
    "boxes": ("kd_box_l1_weight", "kd_box_giou_weight"),
    "features": ("kd_feat_weight",),
    "pseudo": ("kd_pseudo_weight",),
}
RECIPES: dict[str, dict[str, Any]] = {
    "labels": {w: 0.0 for weights in SIGNALS.values() for w in weights},
    "distill": {},
    "distill25": {"label_fraction": 0.25},
}
# one signal's contribution: the recipe with that signal's weights at 0 ("distill25-pseudo": without pseudo-labels)
for _base in ("distill", "distill25"):
    for _signal, _weights in SIGNALS.items():
        RECIPES[f"{_base}-{_signal}"] = {**RECIPES[_base], **dict.fromkeys(_weights, 0.0)}


def _recipe(name: str) -> dict[str, Any]:
    """The `DistillConfig` fields of recipe `name`: `RECIPE` or `RECIPE+NAME=VALUE,...` (number, none, true, false)."""
    from dataclasses import fields

    from onedet.train.distill import DistillConfig

    base, _, overrides = name.partition("+")
    if base not in RECIPES:
        raise SystemExit(f"recipe {name!r}: {base!r} is not one of {', '.join(RECIPES)}")
    known = {f.name for f in fields(DistillConfig)}
    recipe = dict(RECIPES[base])
    for item in filter(None, overrides.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in known:
            raise SystemExit(f"recipe {name!r}: {item!r} is not NAME=VALUE with NAME a DistillConfig field")
        words = {"none": None, "true": True, "false": False}
        recipe[key] = words[value.lower()] if value.lower() in words else float(value)
    return recipe


def _store(args: argparse.Namespace, work: Path) -> Path:
    from onedet.data.prepare import prepare

    fraction = args.train_fraction
    suffix = "" if fraction == 1 else f"_train{fraction * 100:g}"
    store = work / f"{args.dataset}_{args.image_size}{suffix}"
    if (store / "train" / "meta.json").is_file():
        return store
    if args.dataset == "synthetic":
        from onedet.data.synthetic import make_synthetic

        source = make_synthetic(work / "synthetic_source", num_images=args.images, image_size=args.image_size)
    else:
        source = SHARED / DATASETS[args.dataset]
        if not source.is_dir():
            raise SystemExit(f"{source} not found")
    if fraction == 1:
        prepare(source, store, image_size=args.image_size, progress=False)
        return store
    from onedet.data.formats import read_dataset, split_report

    datasets = read_dataset(source)
    for dataset in datasets:
        if dataset.name == "train":
            # One subset for every seed (the seeds vary the runs, not the data), in source order. Not
            # `onedet.data.formats.hold_out_val`, which draws another subset: session 13's runs used this one.
            images = dataset.images
            order = list(range(len(images)))
            random.Random(0).shuffle(order)
            kept = set(order[: round(fraction * len(images))])
            print(f"train split: {len(kept)} of its {len(images)} images (--train-fraction {fraction:g})", flush=True)
            dataset.images = [im for i, im in enumerate(images) if i in kept]
            left_out = [im for i, im in enumerate(images) if i not in kept]
            # what the reader fixed in the images left out is not this store's to report
            _, dataset.report = split_report(dataset.report, left_out, dataset.images)
    prepare(datasets, store, image_size=args.image_size, progress=False)
    return store


def _common(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "pretrained": None,
        "finetune": "full",
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": 1e-3,
        "backbone_lr_scale": 1.0,
        "progress": False,
        "workers": args.threads,
        "eval_every": args.eval_every,
    }


def _teacher(args: argparse.Namespace, store: Path, work: Path) -> Path:
    from onedet.train import TrainConfig, train

    if args.teacher is not None:
        return args.teacher
    run = work / f"teacher_{args.teacher_preset}"
    if not (run / "metrics.json").is_file():
        print(f"teacher: {args.teacher_preset} for {args.teacher_minutes} min", flush=True)
        cfg = TrainConfig(
            data=store, out=run, preset=args.teacher_preset, max_minutes=args.teacher_minutes, **_common(args)
        )
        train(cfg)
    return run


def _run_folder(work: Path, spec: str, recipe: str, seed: int) -> Path:
    folder = f"student_{re.sub(r'[^A-Za-z0-9]+', '-', spec)}_{re.sub(r'[^A-Za-z0-9.]+', '-', recipe)}"
    return work / folder / f"seed{seed}"


def _student(
    args: argparse.Namespace, store: Path, teacher: Path, spec: str, recipe: str, seed: int, work: Path
) -> Path:
    from onedet.train.distill import DistillConfig, distill

    run = _run_folder(work, spec, recipe, seed)
    if not (run / "metrics.json").is_file():
        print(f"student {spec}, {recipe}, seed {seed}: {args.epochs} epochs or {args.minutes} min", flush=True)
        cfg = DistillConfig(
            data=store,
            out=run,
            teacher=teacher,
            student=spec,
            max_minutes=args.minutes,
            seed=seed,
            **_common(args),
            **_recipe(recipe),
        )
        distill(cfg)
    return run


def _measure(run: Path, split: Path, image: Any, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """AP/AP50 of the run's best checkpoint on `split` (eager, and the int8 file through onnxruntime); fp32 and
    int8 files, their sizes and latencies."""
    from onedet.checkpoint import load_run
    from onedet.data.store import Store
    from onedet.end_to_end import build_end_to_end
    from onedet.evaluate import evaluate_run
    from onedet.export import _metadata, export_onnx
    from onedet.quantize import quantize_int8_dynamic
    from onedet.runtime import OnnxDetector

    loaded = load_run(run)
    metrics = evaluate_run(loaded, split, batch_size=args.batch_size)
    folder.mkdir(parents=True, exist_ok=True)
    module, classes, category_ids = build_end_to_end(loaded)
    meta = _metadata(classes, category_ids, module.image_size, "fp32")
    files = {"fp32": export_onnx(module, folder / "model.onnx", meta)}
    files["int8"] = quantize_int8_dynamic(files["fp32"], folder / "int8d.onnx", meta)
    sessions = {name: OnnxDetector(path, threads=args.threads, spinning=False) for name, path in files.items()}
    medians, _ = _time_variants(module, sessions, image[None], args.repeats)
    int8 = _evaluate_onnx(sessions["int8"], Store(split))
    return {
        "params": sum(p.numel() for p in loaded.model.parameters()),
        "depth": loaded.config.depth,
        "AP": metrics["AP"],
        "AP50": metrics["AP50"],
        "int8 AP": int8["AP"],
        **{f"{name} ms": medians[name] * 1000 for name in files},
        **{f"{name} MB": path.stat().st_size / 2**20 for name, path in files.items()},
        "files": files,
    }


def _ap(run: Path, split: Path, args: argparse.Namespace) -> float:
    from onedet.evaluate import evaluate_run

    return float(evaluate_run(run, split, batch_size=args.batch_size)["AP"])


def _print_ratios(rows: list[tuple[str, str, dict[str, Any]]]) -> None:
    """Each recipe's mean AP against its student's `labels` run (goals b and c), and against the teacher's."""
    teacher = next(r for model, _, r in rows if model == "teacher")
    labels = {model: r for model, recipe, r in rows if recipe == "labels"}
    print("\n| model | recipe | AP / labels alone | AP / teacher | fp32 latency / teacher |")
    print("| --- | --- | ---: | ---: | ---: |")
    for model, recipe, r in rows:
        if model == "teacher":
            continue
        base = f"{r['AP'] / labels[model]['AP']:.3f}" if model in labels else "-"
        print(
            f"| {model} | {recipe} | {base} | {r['AP'] / teacher['AP']:.3f} | {r['fp32 ms'] / teacher['fp32 ms']:.2f} |"
        )


def _print_joint_latency(
    rows: list[tuple[str, str, dict[str, Any]]], image: Any, args: argparse.Namespace
) -> dict[str, dict[str, float]]:
    """fp32 and int8 latency of the teacher and of each student (its first run: every recipe exports the same
    graph), all timed together round-robin: the per-row latencies above are measured minutes apart, and their
    ratios drift with the machine's load. Returns {model: {"fp32 ms", "int8 ms"}} for the plot."""
    from onedet.runtime import OnnxDetector
    from onedet.timing import time_round_robin

    first: dict[str, dict[str, Any]] = {}
    for model, _, r in rows:
        first.setdefault(model, r)
    fns = {}
    for model, r in first.items():
        for name in ("fp32", "int8"):
            session = OnnxDetector(r["files"][name], threads=args.threads, spinning=False)
            fns[f"{model} {name}"] = lambda s=session: s.run_batch(image[None])
    medians = time_round_robin(fns, max(args.repeats, 5))
    teacher = {name: medians[f"teacher {name}"] for name in ("fp32", "int8")}
    print("\nthe same latencies timed together, round-robin")
    print("| model | fp32 ms | int8 ms | fp32 / teacher fp32 | int8 / teacher int8 | int8 / fp32 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for model in first:
        fp32, int8 = medians[f"{model} fp32"], medians[f"{model} int8"]
        print(
            f"| {model} | {fp32 * 1000:.0f} | {int8 * 1000:.0f} | {fp32 / teacher['fp32']:.2f} "
            f"| {int8 / teacher['int8']:.2f} | {int8 / fp32:.2f} |"
        )
    return {model: {f"{name} ms": medians[f"{model} {name}"] * 1000 for name in ("fp32", "int8")} for model in first}


def _plot_curves(runs: list[tuple[str, str, list[Path]]], path: Path, title: str) -> None:
    """Val AP per epoch of each run (every seed; one colour per student and recipe), the teacher's final val AP as
    a line: where distillation speeds learning up, and where labels alone catch up (`benchmarks/curves.py`)."""
    from curves import plot_runs  # benchmarks/curves.py (scripts run with benchmarks/ on sys.path)

    from onedet.train.logging import read_metrics

    lines, students = [], []
    for model, recipe, seeds in runs:
        if model == "teacher":
            final = [r["AP"] for r in read_metrics(seeds[0]) if "AP" in r][-1]
            lines.append((final, f"teacher, final ({final:.3f})"))
        else:
            students += [(run, f"{model} ({recipe})") for run in seeds]
    plot_runs(students, path, x="epoch", lines=lines, title=title)


def _plot(
    rows: list[tuple[str, str, dict[str, Any]]],
    path: Path,
    title: str,
    split: str,
    joint: dict[str, dict[str, float]],
) -> None:
    """AP against latency, the latencies timed together (`joint`: one graph per model, whatever the recipe)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    shown = [row for row in rows if row[1] in ("-", *RECIPES) and "-" not in row[1][1:]]  # ablations: the table only
    for (model, recipe, r), color in zip(shown, plt.cm.tab10.colors * 3):
        label = model if recipe == "-" else f"{model} ({recipe})"
        r = {**r, **joint[model]}
        ax.plot([r["fp32 ms"], r["int8 ms"]], [r["AP"], r["AP"]], "-", color=color, alpha=0.4)
        ax.scatter([r["fp32 ms"]], [r["AP"]], color=color, marker="o", label=label)
        ax.scatter([r["int8 ms"]], [r["AP"]], color=color, marker="s")
    ax.set_xlabel("latency, batch 1, all models timed together (ms): circle fp32, square int8")
    ax.set_ylabel(f"AP ({split} split)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=[*DATASETS, "synthetic"], default="bccd")
    parser.add_argument("--images", type=int, default=60, help="synthetic images (with --dataset synthetic)")
    parser.add_argument("--image-size", type=int, default=320)
    parser.add_argument("--teacher", type=Path, default=None, help="an existing teacher run (else one is trained)")
    parser.add_argument("--teacher-preset", default="base")
    parser.add_argument("--teacher-minutes", type=float, default=120.0)
    parser.add_argument("--students", nargs="+", default=["teacher:depth=6", "small"])
    parser.add_argument(
        "--recipes", nargs="+", default=list(RECIPES), help=f"{', '.join(RECIPES)}; or RECIPE+NAME=VALUE,..."
    )
    parser.add_argument("--minutes", type=float, default=30.0, help="wall-clock budget of each student run")
    parser.add_argument("--epochs", type=int, default=100, help="epoch cap of every run (the budget usually ends it)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per seed per student x recipe")
    parser.add_argument(
        "--train-only",
        action="store_true",
        help="train the runs, measure nothing (run several "
        "such processes side by side, then one without it to measure them all)",
    )
    parser.add_argument(
        "--measure-only",
        action="store_true",
        help="train nothing: measure the finished runs among --seeds (recipes without one are left out)",
    )
    parser.add_argument(
        "--train-fraction",
        type=float,
        default=1.0,
        help="train every student on a seeded subset of this fraction of the train split (the teacher saw all of it)",
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-every", type=int, default=1, help="val AP every N epochs (and after the last)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "onedet-bench-distill")
    parser.add_argument("--plot", type=Path, default=None, help="AP-vs-latency PNG (default: WORK/ap_latency.png)")
    parser.add_argument("--curves", type=Path, default=None, help="also plot every run's val AP per epoch here")
    args = parser.parse_args()
    if not 0 < args.train_fraction <= 1:
        parser.error(f"--train-fraction must be in (0, 1], not {args.train_fraction}")
    if args.train_fraction < 1 and args.teacher is None:
        parser.error(
            "--train-fraction needs --teacher, trained on the whole split (one trained here would see the subset)"
        )
    torch.set_num_threads(args.threads)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)

    for recipe in args.recipes:
        _recipe(recipe)  # a typo fails here, not after hours of training
    tick = time.perf_counter()
    store = _store(args, work)
    split = store / "test" if (store / "test" / "meta.json").is_file() else store / "val"
    teacher = _teacher(args, store, work)
    runs: list[tuple[str, str, list[Path]]] = [("teacher", "-", [teacher])]
    for spec in args.students:
        for recipe in args.recipes:
            if not args.measure_only:
                runs.append((spec, recipe, [_student(args, store, teacher, spec, recipe, s, work) for s in args.seeds]))
                continue
            done = [run for s in args.seeds if ((run := _run_folder(work, spec, recipe, s)) / "metrics.json").is_file()]
            if done:
                runs.append((spec, recipe, done))
            else:
                print(f"{spec} ({recipe}): no finished run among seeds {args.seeds}, left out", flush=True)
    if args.train_only:
        return
    if args.curves:
        _plot_curves(runs, args.curves, f"{args.dataset} at {args.image_size} px, from random weights")
        print(f"curves: {args.curves}", flush=True)
    image, image_name = _image(None)
    rows = []
    for model, recipe, seeds in runs:
        print(f"measuring {model} ({recipe})", flush=True)
        # latency, sizes and int8 from the first seed's run (the same graph for every seed); AP from every seed
        row = _measure(seeds[0], split, image, args, work / "onnx" / seeds[0].parent.name / seeds[0].name)
        aps = [row["AP"]] + [_ap(run, split, args) for run in seeds[1:]]
        names = [run.name.removeprefix("seed") if run.name.startswith("seed") else "" for run in seeds]
        rows.append((model, recipe, {**row, "APs": aps, "seeds": names, "AP": sum(aps) / len(aps)}))

    minutes = (time.perf_counter() - tick) / 60
    title = (
        f"{args.dataset} at {args.image_size} px, from random weights; students {args.epochs} epochs each "
        f"(or {args.minutes:g} min); {split.name} split; {args.threads} threads"
    )
    print(f"\n{title}; latency on {image_name}, batch 1; whole sweep {minutes:.0f} min wall")
    print(
        "| model | recipe | blocks | params (M) | AP (mean) | AP per seed | AP50 (first seed) | int8 AP / AP "
        "| fp32 ms | int8 ms | fp32 MB | int8 MB |"
    )
    print("| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for model, recipe, r in rows:
        per_seed = " / ".join(f"{a:.3f}" + (f" (s{n})" if n else "") for a, n in zip(r["APs"], r["seeds"], strict=True))
        print(
            f"| {model} | {recipe} | {r['depth']} | {r['params'] / 1e6:.1f} | {r['AP']:.4f} | {per_seed} "
            f"| {r['AP50']:.4f} "
            f"| {r['int8 AP'] / max(r['APs'][0], 1e-9):.3f} | {r['fp32 ms']:.0f} | {r['int8 ms']:.0f} "
            f"| {r['fp32 MB']:.0f} | {r['int8 MB']:.0f} |"
        )
    _print_ratios(rows)
    joint = _print_joint_latency(rows, image, args)
    plot = args.plot or work / "ap_latency.png"
    _plot(rows, plot, title, split.name, joint)
    print(f"plot: {plot}")


if __name__ == "__main__":
    main()
