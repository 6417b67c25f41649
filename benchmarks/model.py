"""Model benchmark: parameters and CPU forward latency of each preset, and the windowed backbone against timm's stock
global-attention ViT-B/16 at the same input size.

    .venv/bin/python benchmarks/model.py [--size 640] [--repeats 5] [--threads 2]

Batch 1, random weights (latency does not depend on them), `torch.no_grad()`, medians of `--repeats` runs after one
warm-up. The candidates are timed round-robin (one run of each per round), so a load change on a shared machine
hits them all alike and the ratios stay meaningful even when the absolute times do not.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from onedet.config import PRESETS, from_preset
from onedet.model.detector import Detector
from onedet.timing import time_round_robin


def _gflops(fn: Callable[[], object]) -> float:
    """FLOPs counted by torch (matmuls and convs), independent of the machine's load."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    image = torch.rand(1, 3, args.size, args.size)

    # configured for the benchmark size, so no preset resizes its position embedding on the fly
    models = {
        name: Detector(from_preset(name, pretrained=None, image_size=args.size), init_backbone=False).eval()
        for name in PRESETS
    }
    base = models["base"]
    normalised = (image - base.pixel_mean) / base.pixel_std
    stock = timm.create_model(
        "vit_base_patch16_clip_quickgelu_224", img_size=args.size, num_classes=0, weight_init="skip"
    ).eval()
    stock.load_state_dict(base.backbone.state_dict(), strict=False)  # same weights; its final norm stays

    def base_bf16() -> object:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return base(image)

    fns: dict[str, Callable[[], object]] = {f"{name} detector": (lambda m=m: m(image)) for name, m in models.items()}
    fns["base detector, bf16 autocast"] = base_bf16
    fns["base backbone (windowed)"] = lambda: base.backbone(normalised)
    fns["timm ViT-B/16 (global)"] = lambda: stock.forward_features(normalised)
    with torch.no_grad():
        medians = time_round_robin(fns, args.repeats)

    load = os.getloadavg()[0]
    print(f"size {args.size}, batch 1, {args.threads} threads, median of {args.repeats}, load average {load:.1f}")
    print(f"| {'model':<30} | {'params':>12} | {'GFLOPs':>7} | {'ms':>8} | {'ratio':>6} |")
    print(f"| {'-' * 30} | {'-' * 12}:| {'-' * 7}:| {'-' * 8}:| {'-' * 6}:|")
    params = {f"{name} detector": sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    params["base detector, bf16 autocast"] = params["base detector"]
    params["base backbone (windowed)"] = sum(p.numel() for p in base.backbone.parameters())
    params["timm ViT-B/16 (global)"] = sum(p.numel() for p in stock.parameters())
    baseline = {
        "base backbone (windowed)": "timm ViT-B/16 (global)",
        "base detector, bf16 autocast": "base detector",
    }
    for name, median in medians.items():
        ref = baseline.get(name, "base detector")
        flops = "" if "bf16" in name else f"{_gflops(fns[name]):.1f}"
        print(
            f"| {name:<30} | {params[name]:>12,} | {flops:>7} | {median * 1e3:>8.0f} | {median / medians[ref]:>6.2f} |"
        )
    print(
        "ratio: against 'base detector', except the windowed backbone (against timm's global ViT-B/16) "
        "and bf16 (against fp32)"
    )


if __name__ == "__main__":
    main()
