"""Does the exported file run on OpenVINO, and is OpenVINO faster than onnxruntime on this CPU? One process.

    .venv/bin/pip install --target /tmp/ov openvino && rm -rf /tmp/ov/numpy*   # not a dependency of onedet
    PYTHONPATH=/tmp/ov .venv/bin/python benchmarks/runtimes.py [--presets "tiny:window_size=10" ...]
        [--image-size 320] [--threads 2] [--repeats 7] [--out benchmarks/out/peers]

Each preset is exported end to end with random weights (benchmarks/peers.py's files: uint8 pixels of any size in,
boxes out), then read by OpenVINO's ONNX front end as it is, and compiled for its CPU plugin twice: with the
file's dynamic batch, height and width, and reshaped to the photo's static shape. The outputs are compared with
onnxruntime's (the scores sorted, since random weights give near ties whose order may differ), and the three are
timed round-robin on one BCCD photo (batch 1, `--threads` each, onnxruntime's spinning off).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from inference import _image  # benchmarks/inference.py: a BCCD photo, else synthetic noise
from peers import _onedet_files  # benchmarks/peers.py: a preset exported with random weights

from onedet.runtime import OnnxDetector
from onedet.timing import time_round_robin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny:window_size=10", "small:window_size=10"])
    parser.add_argument("--image-size", type=int, default=320)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/peers"))
    args = parser.parse_args()
    import openvino as ov

    image, source = _image(None)
    batch = image[None]
    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": args.threads, "PERFORMANCE_HINT": "LATENCY"}
    calls, errors = {}, {}
    for preset in args.presets:
        path = _onedet_files(preset, args.image_size, args.out)["fp32"]
        detector = OnnxDetector(path, threads=args.threads, spinning=False)
        reference = detector.run_batch(batch)
        calls[f"{preset} onnxruntime"] = lambda d=detector: d.run_batch(batch)
        for shape in ("dynamic", "static"):
            model = core.read_model(str(path))
            if shape == "static":
                model.reshape({0: ov.PartialShape(list(batch.shape))})
            request = core.compile_model(model, "CPU", config).create_infer_request()
            scores = request.infer({0: batch})[1]  # outputs: boxes, scores, labels
            errors[f"{preset} openvino {shape}"] = float(np.abs(np.sort(scores) - np.sort(reference[1])).max())
            calls[f"{preset} openvino {shape}"] = lambda r=request: r.infer({0: batch})
    seconds = time_round_robin(calls, args.repeats)
    print(
        f"\n{source} ({image.shape[1]}x{image.shape[0]}), {args.image_size} px models, batch 1, {args.threads} "
        f"threads, OpenVINO {ov.get_version()}, medians of {args.repeats} round-robin rounds\n"
    )
    print("| model | runtime | median ms | / onnxruntime | max score difference |")
    print("| --- | --- | ---: | ---: | ---: |")
    for name, s in seconds.items():
        preset, runtime = name.split(" ", 1)
        base = seconds[f"{preset} onnxruntime"]
        error = f"{errors[name]:.1e}" if name in errors else "-"
        print(f"| {preset} | {runtime} | {s * 1000:.1f} | {s / base:.2f} | {error} |")


if __name__ == "__main__":
    main()
