"""CPU latency of onedet's presets against peers' ONNX files (e.g. Ultralytics YOLO11 / YOLO26), in one process.

    .venv/bin/python benchmarks/peers.py --peer yolo11n=/work/peers/yolo11n.onnx [--peer NAME=FILE ...]
        [--presets tiny small base "tiny:global_blocks=()"] [--image-size 640] [--threads 2] [--repeats 7]
        [--out benchmarks/out/peers] [--fp32-only]

Peers' files are made outside this project (their packages are not onedet's dependencies; Ultralytics is AGPL),
e.g. `YOLO("yolo11n.yaml").export(format="onnx", imgsz=640)`: random weights, as onedet's here (`pretrained=None`),
since latency does not depend on the weights. Every file runs on onnxruntime's CPU provider, batch 1, `--threads`
intra-op threads, spinning off (so files timed round-robin do not slow each other), medians of `--repeats`
round-robin rounds after a warm-up, on one real 640x480 BCCD photo (synthetic noise without ../shared/data).

What each call covers differs, against onedet: a peer's call is its graph alone on an input letterboxed and
normalised beforehand (its NMS, for YOLO11, is not in the graph and not timed), while onedet's call is its whole
file: uint8 pixels in, letterbox, normalisation, model, top-k decoding, boxes in original pixels out. onedet is also
timed as int8 dynamic (its deployment path on CPUs, `onedet export --int8`). Ratios are to the first peer.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from inference import _image  # benchmarks/inference.py: a BCCD photo, else synthetic noise

from onedet.timing import time_round_robin


def _params(path: Path) -> int:
    """The number of weights stored in an ONNX file (its initializers)."""
    model = onnx.load(str(path), load_external_data=False)
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer)


def _peer_input(session: ort.InferenceSession, image: np.ndarray) -> dict[str, np.ndarray]:
    """The peer's input: `image` letterboxed to the graph's square input (grey 114 padding, YOLO's), RGB in 0..1,
    NCHW float32."""
    from PIL import Image

    spec = session.get_inputs()[0]
    size = int(spec.shape[-1]) if isinstance(spec.shape[-1], int) else 640
    h, w = image.shape[:2]
    scale = size / max(h, w)
    resized = np.asarray(Image.fromarray(image).resize((round(w * scale), round(h * scale)), Image.Resampling.BILINEAR))
    canvas = np.full((size, size, 3), 114, np.uint8)
    canvas[: resized.shape[0], : resized.shape[1]] = resized
    return {spec.name: np.ascontiguousarray(canvas.transpose(2, 0, 1)[None], dtype=np.float32) / 255}


def _session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _onedet_files(preset: str, image_size: int, out: Path) -> dict[str, Path]:
    """onedet `preset` (random weights, 80 classes; `PRESET:FIELD=VALUE,...` overrides ModelConfig fields, as
    `onedet distill --student` reads them) exported end to end at `image_size`, fp32 and int8 dynamic."""
    import re

    import torch

    from onedet.config import from_preset
    from onedet.end_to_end import build_end_to_end
    from onedet.export import _metadata, export_onnx
    from onedet.model.detector import build_detector
    from onedet.model.student import parse_student
    from onedet.quantize import quantize_int8_dynamic

    spec = parse_student(preset)
    if spec.derived:
        raise SystemExit(f"{preset}: a derived student needs a trained teacher; time its exported file as a --peer")
    folder = out / f"{re.sub(r'[^A-Za-z0-9]+', '-', preset).strip('-')}_{image_size}"
    files = {"fp32": folder / "model.onnx", "int8 dynamic": folder / "int8d.onnx"}
    if all(p.is_file() for p in files.values()):
        return files
    torch.manual_seed(0)
    config = from_preset(spec.name, pretrained=None, image_size=image_size, num_classes=80, **spec.overrides)
    model = build_detector(config).eval()
    module, classes, ids = build_end_to_end(model, classes=[str(i) for i in range(80)])
    meta = _metadata(classes, ids, image_size, "fp32")
    export_onnx(module, files["fp32"], meta)
    quantize_int8_dynamic(files["fp32"], files["int8 dynamic"], meta)
    return files


def _pair(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not Path(path).is_file():
        raise argparse.ArgumentTypeError(f"expected NAME=FILE.onnx with an existing file, got {text!r}")
    return name, Path(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer", type=_pair, action="append", required=True, help="NAME=FILE.onnx (repeatable)")
    parser.add_argument("--presets", nargs="+", default=["tiny", "small", "base"])
    parser.add_argument("--image-size", type=int, default=640)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/peers"))
    parser.add_argument("--fp32-only", action="store_true", help="time onedet's fp32 files only")
    args = parser.parse_args()

    from onedet.runtime import OnnxDetector

    image, source = _image(None)
    files: dict[str, Path] = {}
    calls = {}
    for name, path in args.peer:
        session = _session(path, args.threads)
        feed = _peer_input(session, image)
        files[name] = path
        calls[name] = lambda s=session, f=feed: s.run(None, f)
    for preset in args.presets:
        for variant, path in _onedet_files(preset, args.image_size, args.out).items():
            if args.fp32_only and variant != "fp32":
                continue
            name = f"onedet {preset} {variant}"
            detector = OnnxDetector(path, threads=args.threads, spinning=False)
            files[name] = path
            calls[name] = lambda d=detector: d.run_batch(image[None])
    seconds = time_round_robin(calls, args.repeats)
    base_name = args.peer[0][0]
    print(
        f"\n{source} ({image.shape[1]}x{image.shape[0]}), {args.image_size} px inputs, batch 1, onnxruntime "
        f"{ort.__version__} CPU, {args.threads} threads, medians of {args.repeats} round-robin rounds\n"
    )
    print(f"| model | params (M) | file MB | median ms | / {base_name} |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, s in seconds.items():
        mb = files[name].stat().st_size / 2**20
        print(
            f"| {name} | {_params(files[name]) / 1e6:.1f} | {mb:.0f} | {s * 1000:.0f} | {s / seconds[base_name]:.2f} |"
        )


if __name__ == "__main__":
    main()
