"""How long reading annotations takes (`onedet.data.formats.read_dataset`), against baselines in the same process.

Rows on ../shared/data: read_dataset (annotations + image headers) against decoding every image with PIL,
the cost a reader that opened the pixels would pay. A synthetic COCO file (50k images, 350k boxes; empty image
files) compares read_dataset with pycocotools' `COCO()` index, which neither clips nor counts.

    .venv/bin/python benchmarks/readers.py
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from pathlib import Path

from PIL import Image

from onedet.data.formats import read_dataset

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _best_of(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def _decode_all(paths: list[Path]) -> None:
    for p in paths:
        with Image.open(p) as img:
            img.load()


def _synthetic_coco(root: Path, num_images: int = 50_000, num_boxes: int = 350_000) -> Path:
    rng = random.Random(0)
    (root / "train2017").mkdir(parents=True)
    (root / "annotations").mkdir()
    images = [{"id": i, "file_name": f"{i:012d}.jpg", "width": 640, "height": 480} for i in range(num_images)]
    for im in images:
        (root / "train2017" / im["file_name"]).touch()
    anns = [
        {
            "id": k,
            "image_id": rng.randrange(num_images),
            "category_id": rng.choice([1, 2, 3, 5, 90]),
            "bbox": [rng.uniform(0, 600), rng.uniform(0, 440), rng.uniform(1, 100), rng.uniform(1, 100)],
            "area": 1.0,
            "iscrowd": int(rng.random() < 0.01),
        }
        for k in range(num_boxes)
    ]
    cats = [{"id": c, "name": str(c)} for c in (1, 2, 3, 5, 90)]
    path = root / "annotations" / "instances_train2017.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def main() -> None:
    print("| dataset | images | read_dataset s | baseline | baseline s | baseline / read_dataset |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in ("bccd", "aquarium/aquarium_pretrain", "coco128_coco"):
        source = DATA / name
        if not source.exists():
            print(f"| {name} | skipped: {source} not found | | | | |")
            continue
        splits = read_dataset(source)
        paths = list(dict.fromkeys(im.path for s in splits for im in s.images))
        ours = _best_of(lambda source=source: read_dataset(source))
        base = _best_of(lambda paths=paths: _decode_all(paths), repeat=1)
        print(f"| {name} | {len(paths)} | {ours:.3f} | PIL decode of every image | {base:.2f} | {base / ours:.0f}x |")
    from pycocotools.coco import COCO

    with tempfile.TemporaryDirectory() as tmp:
        path = _synthetic_coco(Path(tmp))
        ours = _best_of(lambda: read_dataset(path, holdout_fraction=0.0), repeat=2)
        base = _best_of(lambda: COCO(str(path)), repeat=2)
        row = f"| synthetic COCO, 350k boxes | 50000 | {ours:.2f} | pycocotools COCO() | {base:.2f}"
        row += f" | {base / ours:.2f}x |"
        print(row)


if __name__ == "__main__":
    main()
