"""Inference benchmark: uint8 image in, boxes out, on the CPU: PyTorch eager against onnxruntime fp32, int8 dynamic
and int8 static, per preset; optionally COCO AP of each on a real store split with a trained run.

    .venv/bin/python benchmarks/inference.py [--presets small base] [--repeats 7] [--threads 2 [1]]
        [--image IMG] [--calibration STORE/split] [--weights RUN --data STORE/val] [--out benchmarks/out/inference]
        [--reuse]

Latency: batch 1, one image (a real 640x480 BCCD photo when ../shared/data is present, else a synthetic one)
letterboxed to the preset's size (640 for base and small) inside the measured call, decoded to boxes in original
pixels; `--threads` intra-op threads for both torch and onnxruntime; medians of `--repeats` round-robin runs
after one warm-up (a load change on a shared machine hits every variant alike, so the ratios stay meaningful).
Random weights (`pretrained=None`): latency does not depend on them. Static int8 is calibrated on 16 images of
`--calibration` (default: a synthetic store written under `--out`).

With `--weights RUN --data STORE/val`: AP/AP50 of the run's model in PyTorch (`evaluate_model`) and of each ONNX
file (the store's letterboxed images fed through the graph, boxes mapped back with the store's scale).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from onedet.config import from_preset
from onedet.end_to_end import build_end_to_end
from onedet.export import _metadata, export_onnx
from onedet.model.detector import build_detector
from onedet.quantize import quantize_int8_dynamic, quantize_int8_static
from onedet.runtime import OnnxDetector
from onedet.timing import time_round_robin

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _image(path: Path | None) -> tuple[np.ndarray, str]:
    from onedet.data.images import load_image

    candidates = [path] if path else sorted((SHARED / "bccd/BCCD/JPEGImages").glob("*.jpg"))[:1]
    for p in candidates:
        if p and p.is_file():
            return load_image(p)[0], str(p.name)
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), "synthetic 480x640 noise"


def _calibration_store(out: Path, size: int) -> Path:
    from onedet.data.prepare import prepare
    from onedet.data.synthetic import make_synthetic

    store = out / f"calibration_store_{size}"
    if not (store / "val" / "meta.json").is_file():
        make_synthetic(out / f"calibration_images_{size}", num_images=80, image_size=size, seed=0)
        prepare(out / f"calibration_images_{size}", store, image_size=size, workers=1, progress=False)
    return store / "val"


def _export_all(
    weights: object, folder: Path, calibration: Path, reuse: bool = False, **kw: object
) -> tuple[object, dict[str, Path]]:
    """The eager EndToEnd module and the fp32 / int8-dynamic / int8-static files (`reuse`: files already there)."""
    folder.mkdir(parents=True, exist_ok=True)
    module, classes, category_ids = build_end_to_end(weights, **kw)
    names = {"onnxruntime fp32": "model", "onnxruntime int8 dynamic": "int8d", "onnxruntime int8 static": "int8s"}
    if reuse and all((folder / f"{n}.onnx").is_file() for n in names.values()):
        return module, {name: folder / f"{n}.onnx" for name, n in names.items()}
    meta = _metadata(classes, category_ids, module.image_size, "fp32")
    t = time.perf_counter()
    files = {"onnxruntime fp32": export_onnx(module, folder / "model.onnx", meta)}
    print(f"  export {time.perf_counter() - t:.0f} s", flush=True)
    files["onnxruntime int8 dynamic"] = quantize_int8_dynamic(files["onnxruntime fp32"], folder / "int8d.onnx", meta)
    t = time.perf_counter()
    files["onnxruntime int8 static"] = quantize_int8_static(
        files["onnxruntime fp32"], folder / "int8s.onnx", meta, calibration
    )
    print(f"  static int8 calibration {time.perf_counter() - t:.0f} s", flush=True)
    return module, files


EAGER = "PyTorch eager fp32"


def _time_variants(
    module: torch.nn.Module, sessions: dict[str, OnnxDetector], batch_np: np.ndarray, repeats: int
) -> tuple[dict[str, float], Callable[[], tuple]]:
    """Median seconds per call of eager `module` and each onnxruntime session on one batch, round-robin; and the
    eager call itself (for reference outputs)."""
    batch_t = torch.from_numpy(np.array(batch_np))  # a writable copy

    def eager() -> tuple:
        with torch.inference_mode():
            return module(batch_t)

    fns: dict[str, Callable[[], object]] = {EAGER: eager}
    fns.update({name: (lambda s=s: s.run_batch(batch_np)) for name, s in sessions.items()})
    return time_round_robin(fns, repeats), eager


def latency(args: argparse.Namespace) -> None:
    image, image_name = _image(args.image)
    print(f"input: {image_name} {image.shape[1]}x{image.shape[0]}, batch 1, {args.repeats} repeats (medians)")
    rows = []
    for preset in args.presets:
        cfg = from_preset(preset, pretrained=None)
        print(f"{preset}: building and exporting ({cfg.image_size} px)", flush=True)
        torch.manual_seed(0)
        model = build_detector(cfg).eval()
        calibration = args.calibration or _calibration_store(args.out, cfg.image_size)
        module, files = _export_all(
            model, args.out / preset, calibration, reuse=args.reuse, classes=[str(i) for i in range(80)]
        )
        batch_np = image[None]
        for threads in args.threads:  # the same model and files for every thread count
            torch.set_num_threads(threads)
            sessions = {name: OnnxDetector(path, threads=threads, spinning=False) for name, path in files.items()}
            medians, eager = _time_variants(module, sessions, batch_np, args.repeats)
            ref_scores = eager()[1][0].numpy()
            for name, median in medians.items():
                size_mb = files[name].stat().st_size / 2**20 if name in files else None
                scores = sessions[name].run_batch(batch_np)[1][0] if name in sessions else ref_scores
                diff = float(np.abs(np.sort(scores) - np.sort(ref_scores)).max())
                ratio = medians[EAGER] / median
                rows.append((preset, threads, name, size_mb, median, ratio, diff))
                print(f"  {threads} threads {name}: {median * 1000:.0f} ms", flush=True)
    print()
    print("| preset | threads | variant | file MB | median ms | speed-up vs eager | max score diff vs eager |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: |")
    for preset, threads, name, size_mb, median, ratio, diff in rows:
        mb = f"{size_mb:.0f}" if size_mb is not None else "-"
        print(f"| {preset} | {threads} | {name} | {mb} | {median * 1000:.0f} | {ratio:.2f}x | {diff:.1e} |")


def _evaluate_onnx(detector: OnnxDetector, store: Any) -> dict:
    """COCO metrics of an exported file on a store split, as `onedet eval --weights FILE.onnx` computes them."""
    from onedet.evaluate import coco_metrics, detect_split_onnx

    split = detect_split_onnx(detector, store, batch_size=1)
    gt, detections, image_ids, sizes = split
    return coco_metrics(gt, detections, store.classes, store.category_ids, image_ids, sizes)


def accuracy(args: argparse.Namespace) -> None:
    from onedet.checkpoint import load_run
    from onedet.data.store import Store
    from onedet.evaluate import evaluate_model

    run = load_run(args.weights)
    store = Store(args.data)
    calibration = args.calibration or Path(args.data).parent / "train"
    print(f"accuracy: {args.weights} on {args.data} ({len(store)} images); static int8 calibrated on {calibration}")
    module, files = _export_all(run, args.out / "trained", calibration, reuse=args.reuse)
    threads = args.threads[0]
    rows = [(EAGER, evaluate_model(run.model, store, batch_size=4))]
    sessions = {name: OnnxDetector(path, threads=threads, spinning=False) for name, path in files.items()}
    rows += [(name, _evaluate_onnx(detector, store)) for name, detector in sessions.items()]

    # Latency of the same files on one real photo (batch 1, whole pipeline), round-robin with eager.
    image, image_name = _image(args.image)
    torch.set_num_threads(threads)
    medians, _ = _time_variants(module, sessions, image[None], args.repeats)
    print(f"latency on {image_name} ({image.shape[1]}x{image.shape[0]}), {threads} threads, {args.repeats} repeats")
    print("| variant | file MB | median ms | speed-up vs eager | AP | AP50 | AP vs fp32 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    reference = rows[0][1]["AP"]
    for name, m in rows:
        mb = f"{files[name].stat().st_size / 2**20:.0f}" if name in files else "-"
        speed = medians[EAGER] / medians[name]
        relative = m["AP"] / reference if reference > 0 else float("nan")
        print(
            f"| {name} | {mb} | {medians[name] * 1000:.0f} | {speed:.2f}x | {m['AP']:.4f} | {m['AP50']:.4f} "
            f"| {relative:.3f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["small", "base"])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, nargs="+", default=[2], help="one or more thread counts")
    parser.add_argument("--image", type=Path, default=None)
    parser.add_argument("--calibration", type=Path, default=None, help="store split for static int8")
    parser.add_argument("--weights", type=Path, default=None, help="a trained run: adds the accuracy table")
    parser.add_argument("--data", type=Path, default=None, help="store split to measure AP on (with --weights)")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--reuse", action="store_true", help="reuse the files of an earlier run (same seed)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/inference"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads[0])
    if not args.skip_latency:
        latency(args)
    if args.weights is not None:
        accuracy(args)


if __name__ == "__main__":
    main()
