"""Store scale: prepare's images/s and peak memory, and the loader's images/s, from 1k to 50k synthetic images.

    .venv/bin/python benchmarks/store_scale.py [--sizes 1000 10000 50000] [--work DIR] [--workers 2] [--keep]

The goal (issue 11): memory must not grow with the dataset, so prepare's peak RSS and the loader's rate should
stay within 15% of the smallest size's from 1k to 50k images.

Source images are the built-in synthetic shapes (`onedet.data.synthetic`, image i drawn from (seed 0, i) as
`make_synthetic` draws it), 480 px squares written as JPEG q90 files. `make_synthetic` renders the whole dataset
in memory first (50k x 480 px would be 35 GB), so this script draws `DISTINCT` images once and writes file i as
the bytes of image `i % DISTINCT`: every file is a real file that prepare opens and decodes, only the pixels
repeat. They are written once, for the largest size, under `WORK/source` (kept and reused by later runs), and
each size takes a prefix of them as an in-memory `SourceDataset` (no annotation file to parse).

For each size, both layouts: raw at 320 px (15 GB at 50k) and compact at 640 px (JPEG q95). Each prepare runs
in a fresh child process (not forked from this one, which has mapped earlier stores), with `workers` decoding
processes. Peak RSS is reported for the child's main process (`VmHWM`; its `RUSAGE_SELF` would be wrong: Linux
keeps `ru_maxrss` across exec, so a child started by this script reports this script's peak) and for its
largest decoding worker (`RUSAGE_CHILDREN`; the pool's workers are joined when it closes). Each figure is one
process's resident set, shared pages included (torch's libraries, ~0.3 GB, count in every process). The child
also samples `/proc/<pid>/status` every 0.2 s and prints the peak of each part per run (`RssAnon`: the
process's own heap; `RssFile`: pages of files it has mapped, i.e. page cache, such as a memmap it writes), so a
growing heap can be told apart from a growing mapped page cache.

Then full `BatchLoader` passes (batch 16, uint8, no augmentation, `workers` threads, shuffled; at least 10k
images, so 10 passes at 1k, each over the store opened afresh) are timed over the new store in this process;
its pages are in the page cache as prepare left them. Stores are deleted afterwards unless `--keep`; a size is
skipped, and said so, when the disk lacks room for its store.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

DISTINCT = 1000
SOURCE_SIZE = 480
LAYOUTS = {"raw": 320, "compact": 640}  # layout: store image size
MIN_LOADED = 10_000
OUT = Path(__file__).resolve().parent / "out" / "store_scale"
_MARGIN = 2 << 30  # bytes of disk left free after the largest store


def write_sources(folder: Path, num_images: int) -> None:
    """Files `folder/000000.jpg`... for the first `num_images` (missing ones only) and `targets.npz` (boxes and
    labels of the `DISTINCT` drawn images)."""
    from PIL import Image

    from onedet.data.synthetic import _render_one

    folder.mkdir(parents=True, exist_ok=True)
    if all((folder / f"{i:06d}.jpg").is_file() for i in (0, num_images - 1)) and (folder / "targets.npz").is_file():
        return
    start = time.perf_counter()
    encoded, boxes, labels = [], [], []
    for i in range(DISTINCT):
        pixels, b, lab = _render_one(np.random.default_rng([0, i]), SOURCE_SIZE, False)
        path = folder / f"{i:06d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        encoded.append(path.read_bytes())
        boxes.append(b)
        labels.append(lab)
    counts = np.array([len(b) for b in boxes])
    np.savez(folder / "targets.npz", boxes=np.concatenate(boxes), labels=np.concatenate(labels), counts=counts)
    for i in range(DISTINCT, num_images):
        (folder / f"{i:06d}.jpg").write_bytes(encoded[i % DISTINCT])
    print(f"wrote {num_images} source images in {time.perf_counter() - start:.0f} s", flush=True)


def source_dataset(folder: Path, num_images: int):
    """The first `num_images` source files with their annotations, as prepare's input."""
    from onedet.data.records import SourceDataset, SourceImage
    from onedet.data.synthetic import CLASSES

    with np.load(folder / "targets.npz") as t:  # each t[key] reads the array afresh: once each, not per image
        boxes, labels, counts = t["boxes"], t["labels"], t["counts"]
    ends = np.cumsum(counts)
    per = [(boxes[e - c : e], labels[e - c : e]) for e, c in zip(ends, counts)]
    size_hw = (SOURCE_SIZE, SOURCE_SIZE)
    images = [
        SourceImage(folder / f"{i:06d}.jpg", *per[i % DISTINCT], image_id=i, size_hw=size_hw) for i in range(num_images)
    ]
    return SourceDataset("train", "synthetic", list(CLASSES), list(range(len(CLASSES))), images)


def _status_kib(pid: int) -> dict[str, int]:
    """RssAnon, RssFile and RssShmem of a process (KiB), from /proc; empty if it has exited."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    return {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in lines) if k.startswith("Rss")}


def _sample(peaks: dict[str, int], stop: threading.Event) -> None:
    """Peak RssAnon / RssFile of this process ("main_*") and of any one of its children ("worker_*")."""
    import psutil

    me = psutil.Process()
    while not stop.wait(0.2):
        for role, procs in (("main", [me]), ("worker", me.children())):
            for p in procs:
                status = _status_kib(p.pid)
                for key, part in (("RssAnon", "anon"), ("RssFile", "file")):
                    name = f"{role}_{part}"
                    peaks[name] = max(peaks.get(name, 0), status.get(key, 0))


def child_prepare(source: Path, num_images: int, out: Path, layout: str, workers: int) -> None:
    """Run one prepare in this (fresh) process and print its seconds and peak memory as JSON."""
    from onedet.data.prepare import prepare

    dataset = source_dataset(source, num_images)
    peaks: dict[str, int] = {}
    stop = threading.Event()
    sampler = threading.Thread(target=_sample, args=(peaks, stop), daemon=True)
    sampler.start()
    start = time.perf_counter()
    prepare([dataset], out, image_size=LAYOUTS[layout], workers=workers, layout=layout, progress=False)
    seconds = time.perf_counter() - start
    stop.set()
    sampler.join()
    # VmHWM, not RUSAGE_SELF: Linux carries ru_maxrss over exec, so it would report this script's own peak
    peaks["main_rss"] = int(Path("/proc/self/status").read_text().split("VmHWM:")[1].split()[0])
    peaks["worker_rss"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"seconds": seconds, **{k: v / 1024 for k, v in peaks.items()}}))  # KiB -> MiB


def run_prepare(source: Path, num_images: int, out: Path, layout: str, workers: int) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", str(source), str(num_images), str(out), layout, str(workers)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def time_loader(store_dir: Path, workers: int) -> float:
    """Images per second of full shuffled `BatchLoader` passes (batch 16, uint8), start-up included: as many
    passes as make `MIN_LOADED` images, so that a small store's rate is not its threads' start-up. Each pass
    opens the store afresh: a pass over a mapping already touched skips the page faults of the first touch
    (measured 1.4-2x faster at 1k), and only small stores would get such passes."""
    from onedet.data.loader import BatchLoader
    from onedet.data.store import Store

    passes = math.ceil(MIN_LOADED / len(Store(store_dir)))
    seen, seconds = 0, 0.0
    for _ in range(passes):
        store = Store(store_dir)
        loader = BatchLoader(store, 16, seed=0, as_float=False, workers=workers)
        start = time.perf_counter()
        for batch in loader:
            seen += len(batch.index)
        seconds += time.perf_counter() - start
        del loader, store  # unmapped before the next pass maps it again
    assert seen == passes * len(Store(store_dir)), seen
    return seen / seconds


def store_bytes(layout: str, num_images: int, compact_per_image: float) -> float:
    """Disk a store will take: raw pixels exactly, compact from the last compact store's bytes per image."""
    per_image = 3 * LAYOUTS["raw"] ** 2 if layout == "raw" else compact_per_image
    return num_images * (per_image + 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 50000])
    parser.add_argument("--work", type=Path, default=OUT)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the stores")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        source, n, out, layout, workers = args.child
        child_prepare(Path(source), int(n), Path(out), layout, int(workers))
        return

    import torch

    sizes = sorted(args.sizes)
    source = args.work / "source"
    write_sources(source, sizes[-1])
    print(f"torch {torch.__version__}, {args.workers} workers, sources {SOURCE_SIZE} px JPEG ({DISTINCT} distinct)")
    rows, base, compact_per_image = [], {}, 200_000.0
    for n in sizes:
        for layout, px in LAYOUTS.items():
            out = args.work / f"{layout}-{n}"
            shutil.rmtree(out, ignore_errors=True)
            need, free = store_bytes(layout, n, compact_per_image), shutil.disk_usage(args.work).free
            if need + _MARGIN > free:
                print(f"SKIPPED {n} {layout}: needs {need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free", flush=True)
                continue
            load = Path("/proc/loadavg").read_text().split()[0]
            p = run_prepare(source, n, out, layout, args.workers)
            rate = time_loader(out / "train", args.workers)
            disk = sum(f.stat().st_blocks * 512 for f in out.rglob("*") if f.is_file())
            if layout == "compact":
                compact_per_image = disk / n
            if not args.keep:
                shutil.rmtree(out)
            r = {"prep": n / p["seconds"], "main": p["main_rss"], "worker": p["worker_rss"], "load": rate}
            b = base.setdefault(layout, r)
            rows.append(
                [f"{n:,}", layout, str(px)]
                + [f"{r['prep']:,.0f}", f"{r['main']:,.0f}", f"{r['worker']:,.0f}", f"{r['load']:,.0f}"]
                + [f"{r[k] / b[k]:.2f}" for k in ("prep", "main", "worker", "load")]
            )
            print(
                f"{n} {layout}: prepare {p['seconds']:.0f} s, {disk / 2**30:.2f} GiB, load avg {load}; peak MiB "
                + ", ".join(f"{k} {v:,.0f}" for k, v in p.items() if k != "seconds")
                + f"; {rows[-1]}",
                flush=True,
            )
    header = ["images", "layout", "px", "prepare img/s", "prepare main RSS MiB", "prepare worker RSS MiB"]
    header += ["loader img/s", "prepare img/s ratio", "main RSS ratio", "worker RSS ratio", "loader ratio"]
    print("\n| " + " | ".join(header) + " |")
    print("| " + " | ".join("---" if i < 2 else "---:" for i in range(len(header))) + " |")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"ratios: to the {sizes[0]:,}-image row of the same layout, measured in this run")


if __name__ == "__main__":
    main()
