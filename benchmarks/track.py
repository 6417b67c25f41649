"""Tracking: `onedet predict --track` (ByteTrack, `onedet.track.Tracker`) against SORT on the same detections, on
synthetic videos with known tracks, scored by `trackers.eval` (CLEAR MOT, HOTA, IDF1; TrackEval's matching).

    make quickstart      # a trained model of the synthetic shapes: quickstart/model.onnx
    .venv/bin/python benchmarks/track.py --model quickstart/model.onnx [--videos 8] [--frames 200] [--seed 2000]
        [--threads 2] [--min-iou 0.1]

Each video is the quickstart's world in motion: a textured background and 5 shapes (the four classes, their sizes
and colours drawn as `onedet.data.synthetic` draws them) moving at constant speeds (0.5-3 px a frame at 256 px),
bouncing off the edges and passing over one another in a fixed order, so objects hide each other for a while, which
is where trackers lose identities. Ground truth is each shape's visible extent; a shape less than half visible is
a distractor (TrackEval's rule: a detection on it counts neither way), one not visible at all is absent.

The detector runs once per frame (its detections down to `onedet.track.LOW_SCORE` are kept) and every tracker sees
the same detections: ByteTrack as `predict --track` runs it (each class's own threshold starts tracks, lower scores
only extend them), and SORT (the trackers package's, Bewley et al. 2016) on the detections `predict` keeps, the
classic baseline. Also timed: the tracker's update against the model's call, per frame.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from onedet.data.synthetic import CLASSES, _background, _hsv_to_rgb, _shape_mask
from onedet.runtime import Detections, OnnxDetector, class_thresholds_of
from onedet.track import Tracker

SIZE = 256
OBJECTS = 5
VISIBLE = 0.5  # below this fraction of its pixels a shape is a distractor, not ground truth


def render_video(seed: int, frames: int) -> tuple[list[np.ndarray], list[list[tuple[int, np.ndarray, float]]]]:
    """Frames (uint8 [S, S, 3]) and, per frame, (object id, visible box xyxy, visible fraction) of each shape seen."""
    rng = np.random.default_rng(seed)
    background = _background(rng, SIZE)
    shapes = []
    for _ in range(OBJECTS):
        kind = int(rng.integers(len(CLASSES)))
        side = rng.uniform(0.14, 0.3) * SIZE
        aspect = rng.uniform(0.75, 1.33)
        w, h = side * np.sqrt(aspect), side / np.sqrt(aspect)
        hue = (kind / len(CLASSES) + rng.uniform(-0.18, 0.18)) % 1.0
        colour = _hsv_to_rgb(hue, rng.uniform(0.65, 1.0), rng.uniform(0.55, 1.0))
        speed, angle = rng.uniform(0.5, 3.0), rng.uniform(0, 2 * np.pi)
        shapes.append(
            {
                "kind": kind,
                "w": w,
                "h": h,
                "colour": colour,
                "pos": np.array([rng.uniform(w / 2, SIZE - w / 2), rng.uniform(h / 2, SIZE - h / 2)]),
                "vel": speed * np.array([np.cos(angle), np.sin(angle)]),
            }
        )
    images, truth = [], []
    for _ in range(frames):
        img = background.copy()
        owner = np.full((SIZE, SIZE), -1, np.int16)
        areas = []
        for k, s in enumerate(shapes):  # later shapes pass over earlier ones
            mask = _shape_mask(s["kind"], s["pos"][0], s["pos"][1], s["w"], s["h"], SIZE)
            img[mask] = s["colour"]
            owner[mask] = k
            areas.append(int(mask.sum()))
        seen = []
        for k in range(OBJECTS):
            ys, xs = np.nonzero(owner == k)
            if len(xs):
                box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)
                seen.append((k, box, len(xs) / max(areas[k], 1)))
        images.append(np.clip(np.rint(img), 0, 255).astype(np.uint8))
        truth.append(seen)
        for s in shapes:  # move, bouncing off the edges
            s["pos"] += s["vel"]
            for axis, half in ((0, s["w"] / 2), (1, s["h"] / 2)):
                if not half <= s["pos"][axis] <= SIZE - half:
                    s["vel"][axis] *= -1
                    s["pos"][axis] = np.clip(s["pos"][axis], half, SIZE - half)
    return images, truth


def _mot_row(frame: int, track: int, box: np.ndarray, conf: float, cls: int = -1, vis: float = -1) -> str:
    x0, y0, x1, y1 = (float(v) for v in box)
    return f"{frame + 1},{track + 1},{x0:.2f},{y0:.2f},{x1 - x0:.2f},{y1 - y0:.2f},{conf:.4f},{cls},{vis:.3f}\n"


def write_truth(path: Path, truth: list[list[tuple[int, np.ndarray, float]]]) -> int:
    """MOT ground truth: class 1 (scored) when at least VISIBLE of the shape shows, else 8 (a distractor)."""
    rows = [
        _mot_row(t, k, box, 1, 1 if vis >= VISIBLE else 8, vis) for t, seen in enumerate(truth) for k, box, vis in seen
    ]
    path.write_text("".join(rows))
    return sum(vis >= VISIBLE for seen in truth for _, _, vis in seen)


def write_tracks(path: Path, tracked: list[Detections]) -> None:
    rows = [
        _mot_row(t, int(i), box, float(s))
        for t, d in enumerate(tracked)
        for i, box, s in zip(d.track_ids if d.track_ids is not None else [], d.boxes_xyxy, d.scores)
    ]
    path.write_text("".join(rows))


def run_sort(detections: list[Detections], limits: dict[int, float], fps: float) -> tuple[list[Detections], float]:
    """SORT on the detections `predict` keeps (each class's threshold); the tracked ones with their ids, and the
    seconds its updates took."""
    import supervision as sv
    from trackers import SORTTracker

    sort = SORTTracker(frame_rate=fps)
    out, seconds = [], 0.0
    for d in detections:
        keep = d.scores >= class_thresholds_of(d.category_ids, limits)
        start = time.perf_counter()
        found = sort.update(
            sv.Detections(xyxy=d.boxes_xyxy[keep], confidence=d.scores[keep], class_id=d.category_ids[keep].astype(int))
        )
        seconds += time.perf_counter() - start
        ok = np.asarray(found.tracker_id) >= 0
        out.append(
            Detections(
                boxes_xyxy=np.asarray(found.xyxy, np.float32)[ok].reshape(-1, 4),
                scores=np.asarray(found.confidence, np.float32)[ok],
                category_ids=np.asarray(found.class_id, np.int64)[ok],
                class_names=[],
                track_ids=np.asarray(found.tracker_id, np.int64)[ok],
            )
        )
    return out, seconds


def run_tracker(tracker: Tracker, detections: list[Detections]) -> tuple[list[Detections], float]:
    """`tracker` over one video's detections: the tracked ones per frame, and the seconds its updates took."""
    out, seconds = [], 0.0
    for d in detections:
        start = time.perf_counter()
        out.append(tracker.update(d))
        seconds += time.perf_counter() - start
    return out, seconds


def main() -> None:
    from trackers.eval import evaluate_mot_sequence

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("quickstart/model.onnx"))
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--seed", type=int, default=2000, help="video i is drawn from seed + i")
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-iou", type=float, default=0.1, help="ByteTrack's least overlap for a match")
    args = parser.parse_args()

    detector = OnnxDetector(args.model, threads=args.threads)
    limits = detector.class_thresholds()
    print(f"{detector!r}; {detector.describe_thresholds()}")
    variants = {
        "ByteTrack (`predict --track`)": lambda d: run_tracker(Tracker(limits, args.fps, min_iou=args.min_iou), d),
        "ByteTrack, low-score copies kept": lambda d: run_tracker(
            Tracker(limits, args.fps, min_iou=args.min_iou, duplicate_iou=None), d
        ),
        "SORT": lambda d: run_sort(d, limits, args.fps),
    }
    results: dict[str, list] = {name: [] for name in variants}
    seconds = dict.fromkeys(variants, 0.0)
    model_s = 0.0
    frames_total = objects_total = 0
    with tempfile.TemporaryDirectory() as tmp:
        for v in range(args.videos):
            images, truth = render_video(seed=args.seed + v, frames=args.frames)
            gt = Path(tmp) / f"video{v}_gt.txt"
            objects_total += write_truth(gt, truth)
            detections = []
            for image in images:  # once, down to the lowest score any tracker looks at
                start = time.perf_counter()
                detections.extend(detector([image], threshold=Tracker(limits).low_score))
                model_s += time.perf_counter() - start
            frames_total += len(images)
            for i, (name, run) in enumerate(variants.items()):
                found, took = run(detections)
                seconds[name] += took
                path = Path(tmp) / f"video{v}_{i}.txt"
                write_tracks(path, found)
                results[name].append(evaluate_mot_sequence(gt, path, metrics=["CLEAR", "HOTA", "Identity"]))

    print(
        f"\n{args.videos} videos x {args.frames} frames ({SIZE} px, {OBJECTS} shapes each, "
        f"{objects_total} scored boxes)\n"
    )
    print("| tracker | HOTA | MOTA | IDF1 | ID switches | recall | precision | ms / frame | / the model's ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    model_ms = 1000 * model_s / frames_total
    for name, seqs in results.items():
        tp = sum(r.CLEAR.CLR_TP for r in seqs)
        fn = sum(r.CLEAR.CLR_FN for r in seqs)
        fp = sum(r.CLEAR.CLR_FP for r in seqs)
        idsw = sum(r.CLEAR.IDSW for r in seqs)
        idtp = sum(r.Identity.IDTP for r in seqs)
        idfn = sum(r.Identity.IDFN for r in seqs)
        idfp = sum(r.Identity.IDFP for r in seqs)
        hota = np.mean([r.HOTA.HOTA for r in seqs])  # per video, then the mean (HOTA does not sum)
        mota = (tp - fp - idsw) / max(tp + fn, 1)
        idf1 = 2 * idtp / max(2 * idtp + idfn + idfp, 1)
        ms = 1000 * seconds[name] / frames_total
        print(
            f"| {name} | {hota:.3f} | {mota:.3f} | {idf1:.3f} | {idsw} | {tp / max(tp + fn, 1):.3f} | "
            f"{tp / max(tp + fp, 1):.3f} | {ms:.2f} | {ms / model_ms:.3f} |"
        )
    print(f"| (the model alone) | | | | | | | {model_ms:.2f} | 1.000 |")


if __name__ == "__main__":
    main()
