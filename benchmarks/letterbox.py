"""The in-graph letterbox: ONNX Resize (antialias, opset 18) against the TensorRT-safe MatMul resizes.

The exported graph letterboxes with `onedet.data.letterbox.resize_banded` (banded matrix products with in-graph
weights; before it, `resize_separable`'s two dense ones) because TensorRT 10 does not implement Resize's
antialias mode. This measures what that costs in onnxruntime on the CPU: the three letterboxes are exported on
their own (uint8 `[1, H, W, 3]` in, float `[1, 3, S, S]` out, dynamic H and W) and timed on several image sizes,
round-robin, in the same process, with their largest difference to Resize in grey levels.

    python benchmarks/letterbox.py [--size 640] [--threads 2] [--repeats 7]
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from onedet.data.letterbox import letterbox_float, resize_banded, resize_separable
from onedet.runtime import SPINNING_KEY
from onedet.timing import time_round_robin

SIZES = [(480, 640), (720, 1280), (1080, 1920), (3000, 4000), (1, 2000)]


def _interpolate(images: Tensor, new_h: int, new_w: int) -> Tensor:
    """torch's antialiased bilinear resize as it is, which exports as ONNX Resize (antialias=1)."""
    return F.interpolate(images, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)


class Letterbox(nn.Module):
    """uint8 `[B, H, W, 3]` -> float `[B, 3, S, S]`: onedet's `letterbox_float` with the given resize kernel."""

    def __init__(self, size: int, resize: Callable[[Tensor, int, int], Tensor]) -> None:
        super().__init__()
        self.size, self.resize = size, resize

    def forward(self, images: Tensor) -> Tensor:
        return letterbox_float(images.permute(0, 3, 1, 2), self.size, self.resize)


def _export(module: nn.Module, path: Path) -> Path:
    example = torch.randint(0, 256, (1, 48, 64, 3), dtype=torch.uint8)
    dims = {"images": {1: torch.export.Dim("h", min=1, max=65535), 2: torch.export.Dim("w", min=1, max=65535)}}
    program = torch.onnx.export(
        module, (example,), dynamo=True, input_names=["images"], dynamic_shapes=dims, opset_version=18, verbose=False
    )
    program.save(str(path))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.add_session_config_entry(SPINNING_KEY, "0")  # three sessions timed round-robin: see OnnxDetector
    with tempfile.TemporaryDirectory() as tmp:
        sessions = {
            name: ort.InferenceSession(str(_export(Letterbox(args.size, resize), Path(tmp) / f"{name}.onnx")), options)
            for name, resize in (("Resize", _interpolate), ("MatMul", resize_separable), ("banded", resize_banded))
        }
        print(f"\nletterbox to {args.size} px in onnxruntime, {args.threads} threads, median of {args.repeats}")
        print(
            "| image (h x w) | Resize antialias ms | two dense MatMuls ms | banded MatMuls ms | dense / Resize "
            "| banded / Resize | banded / dense | max diff to Resize, dense, banded (grey levels) |"
        )
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
        rng = np.random.default_rng(0)
        for h, w in SIZES:
            image = rng.integers(0, 256, (1, h, w, 3), dtype=np.uint8)
            outputs = {name: s.run(None, {"images": image})[0] for name, s in sessions.items()}
            feed = {"images": image}
            fns = {name: (lambda s=s, feed=feed: s.run(None, feed)) for name, s in sessions.items()}
            times = time_round_robin(fns, args.repeats)
            diffs = [float(np.abs(outputs["Resize"] - outputs[name]).max()) for name in ("MatMul", "banded")]
            t_resize, t_dense, t_banded = (times[name] for name in ("Resize", "MatMul", "banded"))
            print(
                f"| {h} x {w} | {t_resize * 1e3:.1f} | {t_dense * 1e3:.1f} | {t_banded * 1e3:.1f} "
                f"| {t_dense / t_resize:.2f}x | {t_banded / t_resize:.2f}x | {t_banded / t_dense:.2f}x "
                f"| {diffs[0]:.1e}, {diffs[1]:.1e} |"
            )


if __name__ == "__main__":
    main()
