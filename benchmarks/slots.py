"""What empty box slots cost a training step: the same batches with every slot the store pads to (and a mosaic's or
mixup's multiple of them) against the batches as the loader now yields them (`compact_slots`: the empty slots cut),
for plain and mosaic batches, in one process.

A step here is the model's forward pass, the loss (both matchers) and the backward pass (the optimizer's update is
the same in every row, and is left out so the weights stay the same); round-robin over the four rows, medians.

    python benchmarks/slots.py [--dataset bccd] [--image-size 320] [--preset tiny] [--model window_size=10]
        [--batch-size 8] [--steps 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
DATASETS = {"bccd": "bccd", "aquarium": "aquarium/aquarium_pretrain"}


def main() -> None:
    from onedet.config import ModelConfig
    from onedet.data import loader as loader_module
    from onedet.data.augment import BatchAugment
    from onedet.data.prepare import prepare
    from onedet.data.store import Store
    from onedet.model.detector import build_detector
    from onedet.model.loss import DetectionLoss

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="bccd")
    parser.add_argument("--image-size", type=int, default=320)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--model", nargs="*", default=["window_size=10"], help="ModelConfig overrides, NAME=VALUE")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "onedet-bench-slots")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    store_path = args.work / f"{args.dataset}_{args.image_size}"
    if not (store_path / "train" / "meta.json").is_file():
        prepare(SHARED / DATASETS[args.dataset], store_path, image_size=args.image_size, progress=False)
    store = Store(store_path / "train")

    def batches(mosaic: float) -> list:
        """The loader's batches with every slot kept (compact_slots as the identity)."""
        with mock.patch.object(loader_module, "compact_slots", lambda *t: t):
            loader = loader_module.BatchLoader(
                store, args.batch_size, seed=0, augment=BatchAugment(), mosaic=mosaic, prefetch=0, drop_last=True
            )
            out = []
            for batch in loader:
                out.append(batch)
                if len(out) == args.steps + 1:
                    return out
        return out

    overrides = dict(item.split("=", 1) for item in args.model)
    cfg = ModelConfig.from_preset(
        args.preset,
        image_size=args.image_size,
        num_classes=len(store.classes),
        pretrained=None,
        freeze_backbone=False,
        **{k: int(v) if v.isdigit() else v for k, v in overrides.items()},
    )
    model, loss = build_detector(cfg).train(), DetectionLoss.from_config(cfg)

    def step(batch: tuple) -> float:
        images, boxes, labels, valid = batch
        tick = time.perf_counter()
        terms = loss(model(images), boxes, labels, valid)
        sum(terms.values()).backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - tick

    rows = {}
    for name, mosaic in (("plain", 0.0), ("mosaic 1", 1.0)):
        kept = [tuple(b[:4]) for b in batches(mosaic)]
        rows[f"{name}, every slot"] = kept
        rows[f"{name}, empty slots cut"] = [(b[0], *loader_module.compact_slots(*b[1:])) for b in kept]
    times: dict[str, list[float]] = {name: [] for name in rows}
    for name in rows:  # warm-up
        step(rows[name][0])
    for i in range(1, args.steps + 1):
        for name, batch_list in rows.items():
            times[name].append(step(batch_list[i]))

    base = statistics.median(times["plain, empty slots cut"])
    print(
        f"\n{args.preset} {' '.join(args.model)}, {args.dataset} at {args.image_size} px, batch {args.batch_size}, "
        f"{args.threads} threads, median of {args.steps} steps (forward, loss, backward)\n"
    )
    print("| batches | box slots (mean) | valid boxes per image | ms per step | / plain, empty slots cut |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, batch_list in rows.items():
        slots = statistics.mean(b[3].shape[1] for b in batch_list[1:])
        boxes = statistics.mean(float(b[3].sum(1).float().mean()) for b in batch_list[1:])
        ms = statistics.median(times[name])
        print(f"| {name} | {slots:.0f} | {boxes:.1f} | {ms * 1000:.0f} | {ms / base:.2f} |")


if __name__ == "__main__":
    main()
