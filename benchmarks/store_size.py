"""Store size: bytes per image of the raw and compact layouts on the real datasets, and prepare's speed and memory.

    .venv/bin/python benchmarks/store_size.py [--data ../shared/data] [--image-size 640] [--workers 2]

For each dataset (every split), prepares both layouts into a temporary folder and prints bytes per image of the
source image files (the baseline), of the raw store (uint8 letterboxed pixels + targets), of the compact store
(JPEG q95 of the letterboxed image + targets), their ratios, prepare's images per second, and the peak
resident memory of the parent and of the largest decoding worker (it should not grow with the dataset).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

from onedet.data.formats import read_dataset
from onedet.data.prepare import prepare

DATASETS = {"bccd (VOC)": "bccd", "aquarium (YOLO)": "aquarium", "coco128 (COCO)": "coco128_coco"}


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in folder.rglob("*") if p.is_file())  # on-disk (sparse-aware)


def _peak_mib() -> float:
    """Peak resident memory so far of this process and of its largest finished worker (MiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return max(own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--image-size", type=int, default=640)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    header = (
        f"{'dataset':<17} {'images':>6} {'source B/img':>12} {'raw B/img':>10} {'compact B/img':>13} "
        f"{'compact/raw':>11} {'compact/src':>11} {'raw img/s':>9} {'compact img/s':>13} {'peak MiB':>8}"
    )
    print(f"image size {args.image_size}")
    print(header)
    for label, name in DATASETS.items():
        source = args.data / name
        if not source.is_dir():
            print(f"{label:<17} missing at {source}")
            continue
        splits = read_dataset(source)
        n = sum(len(s.images) for s in splits)
        source_bytes = sum(im.path.stat().st_size for s in splits for im in s.images)
        sizes, speeds = {}, {}
        for layout in ("raw", "compact"):
            with tempfile.TemporaryDirectory(prefix="onedet-store-size-") as tmp:
                start = time.perf_counter()
                prepare(splits, Path(tmp) / "store", image_size=args.image_size, workers=args.workers,
                        layout=layout, progress=False)  # fmt: skip
                speeds[layout] = n / (time.perf_counter() - start)
                sizes[layout] = _folder_bytes(Path(tmp) / "store")
                shutil.rmtree(Path(tmp) / "store")
        src, raw, compact = source_bytes / n, sizes["raw"] / n, sizes["compact"] / n
        print(
            f"{label:<17} {n:>6} {src:>12,.0f} {raw:>10,.0f} {compact:>13,.0f} {compact / raw:>11.3f} "
            f"{compact / src:>11.2f} {speeds['raw']:>9.1f} {speeds['compact']:>13.1f} {_peak_mib():>8.0f}"
        )
    print("peak MiB: running maximum of the resident memory of prepare and its workers (torch alone is ~0.5 GiB)")


if __name__ == "__main__":
    main()
