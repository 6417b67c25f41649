"""Where an exported model's CPU time goes: onnxruntime's profile of each ONNX file, summed by the part of the
model each node came from (the exporter's name scopes), and what that predicts for a depth-pruned student.

    .venv/bin/python benchmarks/latency_breakdown.py [FILE.onnx ...] [--preset small] [--image-size 320]
        [--depths 6 5] [--threads 2] [--repeats 20] [--image IMG] [--out DIR]

Without files it exports `--preset` (random weights: latency does not depend on them) and its derived students
`teacher:depth=N` for each of `--depths`. The first file is the baseline. Each file's share of time per part
comes from `--repeats` profiled runs (batch 1, `--threads` intra-op threads, one image: a real 640x480 BCCD
photo when ../shared/data is present), and the files' latencies from an unprofiled round-robin timing of all of
them together (so the ratios share the machine's load; sessions with spinning off, see `OnnxDetector`). A
`teacher:depth=N` student keeps every part but the blocks `select_blocks` drops (every global and tapped block
stays), so the baseline's profile, block by block, predicts its ratio; `--preset` names the baseline's preset, for
its global blocks and taps. Files of another precision than the baseline's (int8) are timed but not predicted.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import tempfile
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx
from inference import _image  # benchmarks/inference.py

from onedet.config import from_preset
from onedet.errors import OnedetError
from onedet.model.student import select_blocks
from onedet.runtime import PRECISION_KEY, SPINNING_KEY
from onedet.timing import time_round_robin

PARTS = (
    "preprocessing",
    "backbone stem",
    "backbone blocks",
    "neck",
    "head",
    "detector (between the parts)",
    "postprocessing",
    "other",
)
BLOCK = re.compile(r"^model\.backbone\.blocks\.(\d+)")


class Graph(NamedTuple):
    parts: dict[str, str]
    """Each node's part of the model (`PARTS`, or `block N`), by the node's name."""
    blocks: int
    """The number of backbone blocks."""
    stem: tuple[int, ...] | None
    """The patch embedding's weight shape: a derived student shares it (and every part but the blocks) with its
    teacher, so the teacher's profile predicts only such files."""
    precision: str
    """The file's `precision` metadata ("fp32", "int8-dynamic", ...): the profile predicts only its own."""


def read_graph(path: Path) -> Graph:
    """What the benchmark needs of an ONNX file's graph (read once, without weights).

    The torch exporter writes the module path of each node into `pkg.torch.onnx.name_scopes`; the nodes of
    `EndToEnd` itself are the letterbox before the model and the decoding after it."""
    proto = onnx.load(str(path), load_external_data=False)
    graph = proto.graph
    precision = {p.key: p.value for p in proto.metadata_props}.get(PRECISION_KEY, "fp32")
    parts: dict[str, str] = {}
    blocks: set[int] = set()
    seen_model = False
    for node in graph.node:
        meta = {p.key: p.value for p in node.metadata_props}
        scopes = ast.literal_eval(meta.get("pkg.torch.onnx.name_scopes", "[]"))  # qualified module names
        if len(scopes) < 2 or scopes[1] != "model":
            parts[node.name] = "postprocessing" if seen_model else "preprocessing"
            continue
        seen_model = True
        found = [m for s in scopes if (m := BLOCK.match(s))]
        if found:
            blocks.add(int(found[0].group(1)))
            parts[node.name] = f"block {found[0].group(1)}"
        else:
            owner = next((s for s in scopes if s.startswith(("model.backbone", "model.neck", "model.head"))), "")
            parts[node.name] = {"model.backbone": "backbone stem", "model.neck": "neck", "model.head": "head"}.get(
                ".".join(owner.split(".")[:2]), "detector (between the parts)"
            )
    # onnxruntime names some nodes it rewrites after their output instead ("conv2d_2_nchwc" for the node
    # "node_Conv_1809" whose output is "conv2d_2"): outputs map to their node's part too, below the node names.
    for node in graph.node:
        for output in node.output:
            parts.setdefault(output, parts[node.name])
    stems = [tuple(i.dims) for i in graph.initializer if i.name == "model.backbone.patch_embed.proj.weight"]
    return Graph(parts, len(blocks), stems[0] if stems else None, precision)


def _label(path: Path) -> str:
    return "/".join(path.parts[-3:])


def _part_of(name: str, parts: dict[str, str]) -> str:
    """The part of a profiled node. onnxruntime renames what it fuses or converts ("X/MatMulScaleFusion/",
    "conv2d_nchwc" for "node_conv2d"); the layout transposes it inserts have no source and count as "other"."""
    base = name.split("/")[0]
    for candidate in (name, base, "node_" + base.removesuffix("_nchwc"), base.removesuffix("_nchwc")):
        if candidate in parts:
            return parts[candidate]
    return "other"


def profile(
    path: Path, parts: dict[str, str], image: np.ndarray, threads: int, repeats: int, folder: Path
) -> dict[str, float]:
    """Microseconds per run in each part of the model (`PARTS`, and `block N` for each block), from onnxruntime's
    profiler."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry(SPINNING_KEY, "0")  # as the timed sessions (OnnxDetector)
    options.enable_profiling = True
    options.profile_file_prefix = str(folder / path.stem)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: image[None]}
    session.run(None, feed)  # warm-up, also profiled: its events are dropped below by their time
    for _ in range(repeats):
        session.run(None, feed)
    events = json.loads(Path(session.end_profiling()).read_text())
    runs = [e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"]
    warmup_end = runs[0]["ts"] + runs[0]["dur"]
    total: Counter[str] = Counter()
    for e in events:
        if e.get("cat") == "Node" and e["ts"] >= warmup_end and e["name"].endswith("_kernel_time"):
            total[_part_of(e["name"].removesuffix("_kernel_time"), parts)] += e["dur"]
    per_run = {part: us / repeats for part, us in total.items()}
    per_run["backbone blocks"] = sum(us for part, us in per_run.items() if part.startswith("block "))
    return {part: per_run.get(part, 0.0) for part in PARTS} | {
        p: us for p, us in per_run.items() if p.startswith("block ")
    }


def _export_defaults(args: argparse.Namespace, folder: Path) -> list[Path]:
    import torch

    from onedet.end_to_end import build_end_to_end
    from onedet.export import _metadata, export_onnx
    from onedet.model.detector import build_detector
    from onedet.model.student import derive_student

    torch.manual_seed(0)
    teacher = build_detector(from_preset(args.preset, num_classes=3, image_size=args.image_size, pretrained=None))
    models = {args.preset: teacher} | {f"teacher-depth-{d}": derive_student(teacher, d) for d in args.depths}
    files = []
    for name, model in models.items():
        out = folder / f"{name}_{args.image_size}.onnx"
        if not out.is_file():
            module, classes, ids = build_end_to_end(model.eval(), classes=["a", "b", "c"], category_ids=[1, 2, 3])
            export_onnx(module, out, _metadata(classes, ids, module.image_size, "fp32"))
        files.append(out)
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="*", type=Path, help="ONNX files; the first is the baseline")
    parser.add_argument("--preset", default="small", help="the teacher's preset (without files: the one exported)")
    parser.add_argument("--image-size", type=int, default=320, help="without files: the export size")
    parser.add_argument("--depths", type=int, nargs="*", default=[6, 5], help="without files: derived students")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--image", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "onedet-bench-latency-breakdown")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    files = args.files or _export_defaults(args, args.out)
    for f in files:
        if not f.is_file():
            raise SystemExit(f"{f}: ONNX file not found")
    image, image_name = _image(args.image)
    print(f"image: {image_name} {image.shape[1]}x{image.shape[0]}, {args.threads} threads, {args.repeats} runs")

    graphs = {f: read_graph(f) for f in files}
    shares = {f: profile(f, graphs[f].parts, image, args.threads, args.repeats, args.out) for f in files}
    print("\nshare of each file's profiled kernel time")
    print("| file | " + " | ".join(PARTS) + " | blocks |")
    print("| --- |" + " ---: |" * (len(PARTS) + 1))
    for f, us in shares.items():
        total = sum(us[p] for p in PARTS)
        cells = " | ".join(f"{us[p] / total:.3f}" for p in PARTS)
        print(f"| {_label(f)} | {cells} | {graphs[f].blocks} |")

    from onedet.runtime import OnnxDetector

    sessions = {f: OnnxDetector(f, threads=args.threads, spinning=False) for f in files}
    medians = time_round_robin(
        {str(f): (lambda s=s: s.run_batch(image[None])) for f, s in sessions.items()}, args.repeats
    )
    base = files[0]
    base_us, depth = shares[base], graphs[base].blocks
    total = sum(base_us[p] for p in PARTS)
    rest = total - base_us["backbone blocks"]
    teacher = from_preset(args.preset)
    if teacher.depth != depth:
        raise SystemExit(f"{base}: {depth} blocks, but --preset {args.preset} has {teacher.depth}")
    kinds = {"global": set(teacher.global_blocks), "windowed": set(range(depth)) - set(teacher.global_blocks)}
    block_ms = {k: [base_us.get(f"block {i}", 0.0) / 1000 for i in sorted(v)] for k, v in kinds.items()}
    shown = ", ".join(f"{k} {sum(v) / max(len(v), 1):.1f} ms ({len(v)})" for k, v in block_ms.items() if v)
    print(f"\n{base.name}'s blocks, profiled, mean per block: {shown}")

    def predicted(n: int) -> float | None:
        """The baseline's profile with only the blocks a `teacher:depth=n` student keeps (`select_blocks`); None
        for a depth no derived student can have."""
        try:
            kept = select_blocks(depth, teacher.taps, teacher.global_blocks, n)
        except OnedetError:
            return None
        return (rest + sum(base_us.get(f"block {i}", 0.0) for i in kept)) / total

    print(
        f"\nlatency timed together, round-robin; predicted from {base.name}'s profile ({depth} blocks, {args.preset})"
    )
    print("| file | blocks | ms | / baseline | predicted / baseline (its blocks) | the same, average blocks |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for f in files:
        n = graphs[f].blocks
        same_precision = graphs[f].precision == graphs[base].precision
        derived = same_precision and graphs[f].stem == graphs[base].stem and (p := predicted(n)) is not None
        exact = f"{p:.2f}" if derived else "- (not derived)" if same_precision else f"- ({graphs[f].precision})"
        average = f"{(rest + base_us['backbone blocks'] * n / depth) / total:.2f}" if derived else "-"
        ratio = medians[str(f)] / medians[str(base)]
        print(f"| {_label(f)} | {n} | {medians[str(f)] * 1000:.0f} | {ratio:.2f} | {exact} | {average} |")
    for n in range(1, depth):
        if (p := predicted(n)) is not None:
            kept = select_blocks(depth, teacher.taps, teacher.global_blocks, n)
            print(f"teacher:depth={n} keeps blocks {kept}: predicted {p:.2f}x the baseline's latency")


if __name__ == "__main__":
    main()
