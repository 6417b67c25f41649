"""Video prediction: frames per second of `predict_video` on an exported model, against the model alone on the same
(already decoded) frames, on the CPU; and what decoding, drawing and encoding the annotated video add.

    .venv/bin/python benchmarks/video.py [--preset tiny] [--image-size 320] [--window-size 10] [--frames 48]
        [--threads 2] [--repeats 3] [--out benchmarks/out/video]

A 640x480 H.264 clip of `--frames` frames is made from a real BCCD photo (panned a few pixels per frame; synthetic
noise without ../shared/data). The model has random weights (`pretrained=None`; speed does not depend
on them), exported end to end at `--image-size` and run by onnxruntime (spinning threads off, so the variants
timed round-robin do not slow each other). Variants, each over the whole clip:

- `model alone, batch B`: the decoded frames through `OnnxDetector` in lists of B (the baseline: batch 1);
- `decode only`: `VideoReader` over the file;
- `predict_video, batch B`: decode + model (B frames per call), no output file;
- `predict_video + annotated MP4`: the same, drawing each frame's boxes and encoding them (libx264); random
  weights find few boxes at the default threshold, so a last variant draws all of them (threshold 0: the top-k).

Medians of `--repeats` round-robin passes after a warm-up; frames per second and the ratio to the baseline.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from inference import _image  # benchmarks/inference.py: a BCCD photo, else synthetic noise

from onedet.timing import time_round_robin


def _clip(path: Path, frames: int) -> tuple[Path, str]:
    from onedet.video import VideoWriter

    picture, source = _image(None)
    with VideoWriter(path, 25) as writer:
        for i in range(frames):
            writer.write(np.roll(picture, 4 * i, axis=1))
    return path, source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--image-size", type=int, default=320)
    parser.add_argument("--window-size", type=int, default=10, help="attention window (tokens); 10 fits 320 px")
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/video"))
    args = parser.parse_args()

    import torch

    from onedet.config import from_preset
    from onedet.end_to_end import build_end_to_end
    from onedet.export import _metadata, export_onnx
    from onedet.model.detector import build_detector
    from onedet.predict import predict_video
    from onedet.runtime import OnnxDetector
    from onedet.video import VideoReader

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    config = from_preset(
        args.preset, pretrained=None, image_size=args.image_size, window_size=args.window_size, num_classes=3
    )
    onnx_path = args.out / f"{args.preset}_{args.image_size}_w{args.window_size}.onnx"
    if not onnx_path.is_file():
        torch.manual_seed(0)
        module, classes, ids = build_end_to_end(build_detector(config).eval(), classes=["a", "b", "c"])
        export_onnx(module, onnx_path, metadata=_metadata(classes, ids, args.image_size, "fp32"))
    detector = OnnxDetector(onnx_path, threads=args.threads, spinning=False)
    clip, source = _clip(args.out / "clip.mp4", args.frames)
    with VideoReader(clip) as reader:
        frames = list(reader)
    scratch = Path(tempfile.mkdtemp(dir=args.out))

    def model_alone(batch: int):
        return lambda: [detector(frames[i : i + batch], threshold=0.3) for i in range(0, len(frames), batch)]

    variants = {
        "model alone, batch 1": model_alone(1),
        "model alone, batch 4": model_alone(4),
        "decode only": lambda: sum(1 for _ in VideoReader(clip)),
        "predict_video, batch 1": lambda: predict_video(detector, clip, batch_size=1),
        "predict_video, batch 4": lambda: predict_video(detector, clip, batch_size=4),
        "predict_video, batch 4 + annotated MP4": lambda: predict_video(detector, clip, scratch / "a.mp4"),
        "the same, drawing every box (threshold 0)": lambda: predict_video(
            detector, clip, scratch / "b.mp4", threshold=0.0
        ),
    }
    drawn = {
        threshold: np.mean([len(d) for d in predict_video(detector, clip, threshold=threshold)])
        for threshold in (None, 0.0)
    }
    seconds = time_round_robin(variants, args.repeats)
    base = seconds["model alone, batch 1"]
    print(
        f"{args.preset} at {args.image_size} px (random weights), onnxruntime fp32, {args.threads} threads; "
        f"{len(frames)} frames of 640x480 H.264 from {source}; medians of {args.repeats} round-robin passes\n"
    )
    print(f"boxes per frame: {drawn[None]:.1f} at the model's threshold, {drawn[0.0]:.1f} at 0\n")
    print("| variant | s per clip | frames / s | time / model alone, batch 1 |")
    print("| --- | ---: | ---: | ---: |")
    for name, s in seconds.items():
        print(f"| {name} | {s:.2f} | {len(frames) / s:.1f} | {s / base:.2f} |")


if __name__ == "__main__":
    main()
