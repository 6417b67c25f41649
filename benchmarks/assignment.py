"""One-to-one (OneNet) alone vs with the auxiliary one-to-many branch, on the synthetic shapes, tiny preset, CPU.

Two measurements per variant, both with the preset's frozen, randomly initialised backbone (no pretrained weights
exist offline), AdamW, no augmentation:

1. memorisation: steps until AP50 > 0.9 on 4 training images (the setting of tests/test_overfit.py);
2. generalisation: AP50 / AP on held-out images after a few epochs on a small training set.

The baseline is the one-to-one head alone, measured in the same process; the table gives aux / baseline.

    python benchmarks/assignment.py [--train 48 --val 16 --epochs 6 --lr 3e-3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from onedet.config import ModelConfig
from onedet.data.synthetic import CLASSES, render_synthetic
from onedet.evaluate import coco_metrics
from onedet.model.detector import build_detector
from onedet.model.loss import DetectionLoss, weighted_total
from onedet.model.postprocess import decode_topk

SIZE = 256


def _data(num_images: int, seed: int):
    pixels, targets = render_synthetic(num_images, image_size=SIZE, seed=seed)
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    m = max(len(b) for b, _ in targets)
    boxes = torch.zeros(num_images, m, 4)
    labels = torch.zeros(num_images, m, dtype=torch.long)
    valid = torch.zeros(num_images, m, dtype=torch.bool)
    for i, (b, lab) in enumerate(targets):
        boxes[i, : len(b)], labels[i, : len(b)], valid[i, : len(b)] = torch.from_numpy(b), torch.from_numpy(lab), True
    return images, boxes, labels, valid, targets


def _evaluate(model, images, targets) -> dict:
    model.eval()
    detections = []
    with torch.no_grad():
        for start in range(0, len(images), 16):
            out = model(images[start : start + 16])
            b, s, lab = decode_topk(out.logits, out.boxes_xyxy, 100)
            detections += [{"boxes_xyxy": b[i].numpy(), "scores": s[i].numpy(), "labels": lab[i].numpy()}
                           for i in range(len(b))]  # fmt: skip
    model.train()
    gt = [{"boxes_xyxy": b, "labels": lab} for b, lab in targets]
    return coco_metrics(gt, detections, list(CLASSES))


def _setup(aux: bool, lr: float, aux_scale: float = 1.0):
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset("tiny", pretrained=None, num_classes=len(CLASSES), aux_head=aux)
    cfg.loss_weights = {k: w * (aux_scale if k.startswith("aux_") else 1.0) for k, w in cfg.loss_weights.items()}
    model = build_detector(cfg).train()
    params = [p for p in model.parameters() if p.requires_grad]
    return cfg, model, DetectionLoss.from_config(cfg), torch.optim.AdamW(params, lr=lr, weight_decay=0.05)


def _step(cfg, model, loss_fn, optimizer, images, boxes, labels, valid) -> None:
    terms = loss_fn(model(images), boxes, labels, valid, image_size=(SIZE, SIZE))
    optimizer.zero_grad()
    weighted_total(terms, cfg.loss_weights).backward()
    optimizer.step()


def memorise(aux: bool, lr: float, max_steps: int, aux_scale: float = 1.0) -> int | None:
    """Steps until AP50 > 0.9 on the 4 images it trains on (None: not within max_steps)."""
    cfg, model, loss_fn, optimizer = _setup(aux, lr, aux_scale)
    images, boxes, labels, valid, targets = _data(4, seed=0)
    for step in range(1, max_steps + 1):
        _step(cfg, model, loss_fn, optimizer, images, boxes, labels, valid)
        if _evaluate(model, images, targets)["AP50"] > 0.9:
            return step
    return None


def generalise(
    aux: bool, lr: float, num_train: int, num_val: int, epochs: int, batch_size: int, aux_scale: float = 1.0
) -> dict:
    cfg, model, loss_fn, optimizer = _setup(aux, lr, aux_scale)
    images, boxes, labels, valid, targets = _data(num_train + num_val, seed=1)
    for epoch in range(epochs):
        order = np.random.default_rng(epoch).permutation(num_train)
        for start in range(0, num_train, batch_size):
            j = np.sort(order[start : start + batch_size])
            _step(cfg, model, loss_fn, optimizer, images[j], boxes[j], labels[j], valid[j])
    return _evaluate(model, images[num_train:], targets[num_train:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", type=int, default=48)
    parser.add_argument("--val", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3, help="generalisation run")
    parser.add_argument("--memorise-lr", type=float, default=5e-3, help="memorisation run (as tests/test_overfit.py)")
    parser.add_argument("--max-steps", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = {}
    # The aux terms are normalised by their positives (about aux_topk = 10 per box); x10 puts them on the
    # per-box scale of the one-to-one terms (as normalising them by the number of boxes would).
    variants = (("one-to-one", False, 1.0), ("+ aux one-to-many", True, 1.0), ("+ aux, aux weights x10", True, 10.0))
    for name, aux, scale in variants:
        t = time.perf_counter()
        steps = memorise(aux, args.memorise_lr, args.max_steps, scale)
        val = generalise(aux, args.lr, args.train, args.val, args.epochs, args.batch_size, scale)
        rows[name] = (steps, val["AP50"], val["AP"], time.perf_counter() - t)
    base = rows["one-to-one"]
    print(f"tiny preset, {SIZE} px, frozen random backbone; memorise: 4 images, lr {args.memorise_lr}; "
          f"held-out: {args.train} train / {args.val} val images, {args.epochs} epochs, batch {args.batch_size}, "
          f"lr {args.lr}")  # fmt: skip
    print("| variant | steps to AP50 > 0.9 (memorise) | held-out AP50 | held-out AP | ratio AP50 / AP vs 1-to-1 |")
    print("| --- | --- | --- | --- | --- |")
    for name, (steps, ap50, ap, _) in rows.items():
        ratio = f"{ap50 / max(base[1], 1e-9):.2f} / {ap / max(base[2], 1e-9):.2f}"
        print(f"| {name} | {steps if steps else f'> {args.max_steps}'} | {ap50:.3f} | {ap:.3f} | {ratio} |")


if __name__ == "__main__":
    main()
