"""Predict on images, videos, streams, folders or globs with a run folder (PyTorch) or an exported `.onnx` file
(onnxruntime).

Both paths run the same pixels-to-boxes computation: a run folder is wrapped in `onedet.end_to_end.EndToEnd` and run
eagerly, an `.onnx` file is that module exported. The ONNX path never imports torch (torch is imported lazily,
only for run folders), so a serving image needs only onnxruntime, numpy and Pillow (and PyAV for videos:
`onedet.video`).
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import shutil
import sys
from collections.abc import Sequence
from contextlib import nullcontext
from itertools import islice
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from onedet.data.images import IMAGE_SUFFIXES, load_image
from onedet.errors import OnedetError
from onedet.options import PredictOptions
from onedet.progress import progress_bar
from onedet.runtime import BatchDetector, Detections, OnnxDetector, check_threshold
from onedet.video import VIDEO_SUFFIXES, VideoReader, VideoWriter, is_stream, is_video

log = logging.getLogger(__name__)


class TorchDetector(BatchDetector):
    """A run folder (or checkpoint folder) as a callable with `OnnxDetector`'s interface, run in PyTorch."""

    def __init__(self, run: str | Path | Any, device: str | None = None) -> None:
        import torch

        from onedet.end_to_end import build_end_to_end

        if isinstance(run, (str, Path)):
            from onedet.checkpoint import load_run

            run = load_run(Path(run))
        self.module, self.classes, self.category_ids = build_end_to_end(run)
        self.score_thresholds = getattr(run, "score_thresholds", None)  # a LoadedRun's; a bare Detector has none
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.module.to(self.device)
        self.image_size = self.module.image_size
        self.names_by_id = dict(zip(self.category_ids, self.classes))

    def run_batch(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The raw outputs for a uint8 [B, H, W, 3] batch, as `OnnxDetector.run_batch` returns them."""
        import torch

        with torch.inference_mode():
            boxes, scores, labels = self.module(
                torch.from_numpy(np.require(batch, requirements=["C", "W"])).to(self.device)
            )
        return boxes.float().cpu().numpy(), scores.float().cpu().numpy(), labels.cpu().numpy()


def load_predictor(model: str | Path | Any) -> OnnxDetector | TorchDetector:
    """An `.onnx` file -> `OnnxDetector`; a run or checkpoint folder (or a LoadedRun) -> `TorchDetector`."""
    if isinstance(model, (OnnxDetector, TorchDetector)):
        return model
    if isinstance(model, (str, Path)):
        path = Path(model)
        if path.suffix == ".onnx" or path.is_file():
            return OnnxDetector(path)
        if not path.exists():
            raise OnedetError(f"{path}: no such model (expected a run folder or an .onnx file)")
    return TorchDetector(model)


def predict(
    model: str | Path | Any, images: Any, threshold: float | None = PredictOptions.threshold
) -> Detections | list[Detections]:
    """Detect objects: one image (uint8 [H, W, 3] RGB array, Pillow image or file path) -> `Detections`;
    a list of them -> a list of `Detections`. `model` is a run folder, an `.onnx` file or a loaded predictor.
    `threshold`: the minimum score for every class; None, each class's own (`BatchDetector.class_thresholds`)."""
    detector = load_predictor(model)
    single = not isinstance(images, (list, tuple)) and not (isinstance(images, np.ndarray) and images.ndim == 4)
    items = [images] if single else list(images)
    arrays = [load_image(x)[0] if isinstance(x, (str, Path)) else x for x in items]
    results = detector(arrays, threshold=threshold)
    return results[0] if single else results


MEDIA_SUFFIXES = IMAGE_SUFFIXES | VIDEO_SUFFIXES
"""What `expand_sources` takes from folders and globs: images and videos."""


def expand_sources(sources: Sequence[str | Path], skipped: list[Path] | None = None) -> list[Path | str]:
    """Image and video files from files, folders (their images and videos, sorted, not recursive) and globs (`**`
    allowed), in order; stream URLs (`onedet.video.is_stream`) as they are, strings.

    A source that names nothing raises OnedetError; a file listed twice is kept once. `skipped` receives the
    other entries of the folders (not sub-folders): notes, labels, broken links and symlink loops.
    """
    found: list[Path | str] = []
    for source in sources:
        if is_stream(source):
            found.append(str(source))
            continue
        path = Path(source)
        matches: list[Path]
        if path.is_dir():
            entries = sorted(path.iterdir())
            matches = [p for p in entries if p.is_file() and p.suffix.lower() in MEDIA_SUFFIXES]
            if not matches:
                raise OnedetError(f"{path}: folder holds no images or videos ({', '.join(sorted(MEDIA_SUFFIXES))})")
            if skipped is not None:
                kept = set(matches)
                skipped.extend(p for p in entries if p not in kept and not p.is_dir())
        elif path.is_file():
            matches = [path]
        elif path.is_symlink():
            raise OnedetError(f"{path}: a symbolic link that loops or points nowhere")
        elif any(c in str(source) for c in "*?["):
            matches = sorted(
                Path(p) for p in glob.glob(str(source), recursive=True) if Path(p).suffix.lower() in MEDIA_SUFFIXES
            )
            if not matches:
                raise OnedetError(f"{source}: the pattern matches no image or video files")
        else:
            raise OnedetError(f"{path}: no such image, video, folder or pattern")
        found.extend(matches)
    return list(dict.fromkeys(found))


def _color(category_id: int) -> tuple[int, int, int]:
    # A fixed, well-spread hue per class id (golden-ratio steps), so colours are stable across images.
    import colorsys

    r, g, b = colorsys.hsv_to_rgb((category_id * 0.618034) % 1.0, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_detections(image: np.ndarray, detections: Detections) -> Any:
    """A Pillow image of `image` with each box, class name and score drawn on it; tracked detections also show
    their track id (`#7`) and take a colour per track instead of per class."""
    from PIL import Image, ImageDraw, ImageFont

    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    width = max(1, round(max(canvas.size) / 400))
    try:
        font = ImageFont.load_default(size=max(10, round(max(canvas.size) / 60)))
    except TypeError:  # Pillow < 10.1 has one fixed-size default font
        font = ImageFont.load_default()
    # Draw the weakest first so the strongest boxes end up on top.
    for i in reversed(range(len(detections))):
        x0, y0, x1, y1 = detections.boxes_xyxy[i].tolist()
        text = f"{detections.class_names[i]} {detections.scores[i]:.2f}"
        if detections.track_ids is None:
            color = _color(int(detections.category_ids[i]))
        else:
            color = _color(int(detections.track_ids[i]))
            text = f"#{int(detections.track_ids[i])} {text}"
        draw.rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=color, width=width)
        tx0, ty0, tx1, ty1 = draw.textbbox((x0, y0), text, font=font)
        top = y0 - (ty1 - ty0) - 2 if y0 - (ty1 - ty0) - 2 >= 0 else y0
        draw.rectangle([x0, top, x0 + (tx1 - tx0) + 4, top + (ty1 - ty0) + 2], fill=color)
        draw.text((x0 + 2, top - (ty0 - y0)), text, fill=(0, 0, 0), font=font)
    return canvas


def _output_name(path: Path | str, used: set[str], suffix: str = ".png") -> str:
    """`<stem><suffix>`, made unique when two sources share a file name. PNG for images: lossless, so thin box
    outlines and small labels stay crisp (JPEG smears them); MP4 for videos. A stream URL's stem is its last path
    part, else its host (`rtsp://cam1:554/live` -> `live`), in letters, digits, `-`, `_` and `.`."""
    if isinstance(path, str):  # a stream URL
        parts = [p for p in re.split(r"[?#]", path.split("://", 1)[1])[0].split("/") if p]  # no query, fragment
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(parts[-1]).stem if parts else "stream").strip("._") or "stream"
    else:
        stem = path.stem
    name, n = f"{stem}{suffix}", 1
    while name in used:
        name, n = f"{stem}_{n}{suffix}", n + 1
    used.add(name)
    return name


def predict_video(
    model: str | Path | Any,
    video: str | Path,
    out: str | Path | None = None,
    threshold: float | None = PredictOptions.threshold,
    batch_size: int = 4,
    track: bool = PredictOptions.track,
    max_frames: int | None = PredictOptions.max_frames,
) -> list[Detections]:
    """Detect objects in every frame of a video file (`onedet.video.VideoReader`: any container and codec FFmpeg
    reads); one `Detections` per frame, in order. With `out` (a file such as `annotated.mp4`) the frames are also
    written there with their detections drawn, at the video's frame rate, atomically (`onedet.video.VideoWriter`).
    `batch_size` frames go through the model at a time; `max_frames` stops after that many. Needs PyAV
    (`pip install 'onedet[video]'`).

    `video` may be a stream URL given as a string (`rtsp://camera/...`, `http://host/live.ts`, ...: any that FFmpeg
    opens), read live until it ends, `max_frames` or Ctrl-C: for a stream, Ctrl-C is the way to stop, so it ends
    the reading and keeps what was done (the annotated video is closed as complete, the frames so far returned);
    so does a stream that breaks off after its first frame (said on stderr). For a file, Ctrl-C or a frame that
    fails to decode stops the run and leaves no partial video.

    With `track`, objects are followed from frame to frame (ByteTrack, `onedet.track.Tracker`; needs
    `onedet[track]`): each frame keeps the detections that belong to a track, with their `track_ids`. `threshold`
    (else each class's own) is then the score that starts a track; lower-scoring detections (down to
    `onedet.track.LOW_SCORE`) only extend tracks that exist."""
    if threshold is not None:
        check_threshold(threshold)
    if batch_size < 1:
        raise OnedetError(f"batch_size must be at least 1, got {batch_size}")
    if max_frames is not None and max_frames < 1:
        raise OnedetError(f"max_frames must be at least 1, got {max_frames}")
    detector = load_predictor(model)
    if track:
        from onedet.track import Tracker, require_trackers

        require_trackers()  # before the video is opened
    tracker = None
    results: list[Detections] = []
    bar = None
    # the writer's `with` renames the finished file, or removes it when anything below fails
    with VideoReader(video) as reader, VideoWriter(out, reader.fps) if out is not None else nullcontext() as writer:
        try:
            if track:
                limits = detector.class_thresholds() if threshold is None else threshold
                tracker = Tracker(limits, fps=float(reader.fps))
            total = min(reader.frames, max_frames) if reader.frames and max_frames else reader.frames or max_frames
            bar = progress_bar(total, str(video) if reader.stream else Path(video).name, "frame")
            frames = islice(reader, max_frames)
            try:
                while batch := list(islice(frames, batch_size)):  # the next batch_size frames
                    if tracker is None:
                        found = detector(batch, threshold=threshold)
                    else:
                        found = [tracker.update(d) for d in detector(batch, threshold=tracker.low_score)]
                    results.extend(found)
                    if writer is not None:
                        for frame, detections in zip(batch, found):
                            writer.write(np.asarray(draw_detections(frame, detections)))
                    if bar is not None:
                        bar.update(len(batch))
            except KeyboardInterrupt:
                if not reader.stream:
                    raise
                print(f"{video}: stopped after {len(results)} frames", file=sys.stderr)
            except OnedetError as err:  # a stream that drops after hours keeps its hours
                if not (reader.stream and results):
                    raise
                print(f"{video}: the stream ended after {len(results)} frames: {err}", file=sys.stderr)
            if not results:
                raise OnedetError(f"{video}: holds no frame that decodes")
        finally:
            if bar is not None:
                bar.close()
    return results


class YoloDatasetWriter:
    """Images and their detections written as a YOLO dataset (`images/`, `labels/`, `data.yaml` with the model's
    classes), for pre-annotation: correct the boxes in a labelling tool (CVAT, Label Studio and Roboflow import
    YOLO), then `onedet prepare` it. `onedet.data.formats.yolo` reads it back as one `train` split.

    Written into a temporary folder beside `folder` and moved there by `close()` (replacing an older one), so a
    failed run never leaves a dataset that looks whole; `abort()` removes it. Image files are copied as they are,
    except those turned upright by their EXIF orientation, which are saved upright as PNG so the boxes fit the
    pixels every tool shows.
    """

    def __init__(self, folder: Path, category_ids: Sequence[int], names: Sequence[str]) -> None:
        self.folder = folder
        self._tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
        if self._tmp.exists():
            shutil.rmtree(self._tmp)
        (self._tmp / "images").mkdir(parents=True)
        (self._tmp / "labels").mkdir()
        self._index = {int(c): i for i, c in enumerate(category_ids)}
        self._names = [str(n) for n in names]
        self._used: set[str] = set()
        self.count = 0
        """Images added."""
        self.outside = 0
        """Detections left out because no part of them is inside their image."""

    def add(self, path: Path, image: np.ndarray, fixes: Sequence[str], detections: Detections) -> None:
        """`image` (as `load_image` decoded `path`, with its `fixes`) and its detections, in YOLO's normalised
        `class cx cy w h` lines."""
        from onedet.data.formats.common import clip_boxes
        from onedet.data.formats.yolo import label_lines

        upright = "exif_rotated" in fixes
        stem = _output_name(path, self._used, "")  # unique stems: a.png and a.jpg must not share a.txt
        name = stem + (".png" if upright else path.suffix.lower())
        if upright:
            from PIL import Image

            Image.fromarray(image).save(self._tmp / "images" / name)
        else:
            shutil.copyfile(path, self._tmp / "images" / name)
        boxes, keep, _ = clip_boxes(detections.boxes_xyxy.astype(np.float64), np.array(image.shape[:2]))
        self.outside += int((~keep).sum())  # wholly outside the image: no label to correct
        labels = np.array([self._index[int(c)] for c in detections.category_ids[keep]], np.int64)
        (self._tmp / "labels" / f"{stem}.txt").write_text(label_lines(boxes[keep], labels, image.shape[:2]))
        self.count += 1

    def close(self) -> Path:
        names = ", ".join(json.dumps(n) for n in self._names)  # JSON strings are valid YAML flow scalars
        (self._tmp / "data.yaml").write_text(
            f"# written by onedet predict --dataset: {len(self._used)} images, their detections as labels\n"
            f"train: images\nnc: {len(self._names)}\nnames: [{names}]\n"
        )
        if self.folder.exists():
            shutil.rmtree(self.folder)
        self._tmp.rename(self.folder)
        return self.folder

    def abort(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> YoloDatasetWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None and self.count:
            self.close()
        else:  # a failure, or no image at all (only videos, or none readable): no dataset
            self.abort()


def predict_files(
    model: str | Path | Any,
    sources: Sequence[str | Path],
    out: str | Path,
    threshold: float | None = PredictOptions.threshold,
    track: bool = PredictOptions.track,
    max_frames: int | None = PredictOptions.max_frames,
    dataset: bool = PredictOptions.dataset,
) -> list[dict[str, Any]]:
    """Detect objects in every image, video and stream (a URL: `predict_video`) of `sources`; write annotated PNGs
    (MP4s for videos and streams) and `detections.json` into `out`. `max_frames` stops each video after that many.
    `dataset` also writes the images and the detections kept as a YOLO dataset, `out/dataset`
    (`YoloDatasetWriter`; videos are not part of it).

    Returns the detections as COCO-results dicts: `file` (the image or video path), `bbox` [x, y, w, h] in original
    pixels, `score`, `category_id` (the dataset's own id) and `category` (the name); for a video also `frame` (from
    0), and with `track` its `track_id` (`predict_video`; images are not tracked). Images and videos that cannot be
    read are skipped, counted and named on stderr (the run fails only when none can be read).
    """
    if threshold is not None:
        check_threshold(threshold)  # before --out is created
    if max_frames is not None and max_frames < 1:
        raise OnedetError(f"max_frames must be at least 1, got {max_frames}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OnedetError(f"{out}: exists and is not a folder; pass another --out")
    not_images: list[Path] = []
    files = expand_sources(sources, not_images)
    if not_images:  # counted and named, not silently dropped
        shown = [p.name + (" (a link that loops or points nowhere)" if not p.exists() else "") for p in not_images]
        more = f", ... ({len(shown) - 10} more)" if len(shown) > 10 else ""
        print(f"skipped {len(shown)} non-image file(s): {', '.join(shown[:10])}{more}", file=sys.stderr)
    detector = load_predictor(model)
    if track and any(map(is_video, files)):
        from onedet.track import require_trackers

        require_trackers()  # one clear error, not every video skipped for it
    out.mkdir(parents=True, exist_ok=True)
    print(detector.describe_thresholds(threshold), file=sys.stderr)
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    used: set[str] = set()
    images = [path for path in files if not is_video(path)]
    labels = None
    if dataset:
        names = [detector.names_by_id[c] for c in detector.category_ids]
        labels = YoloDatasetWriter(out / "dataset", detector.category_ids, names)
    bar = progress_bar(len(images), "images", "image") if len(images) > 1 else None
    # the dataset's `with` moves it into place when the loop ends, or removes it when anything in it fails
    with labels if labels is not None else nullcontext():
        for path in files:
            if is_video(path):
                try:
                    name = _output_name(path, used, ".mp4")
                    found = predict_video(
                        detector, path, out / name, threshold=threshold, track=track, max_frames=max_frames
                    )
                except OnedetError as err:
                    skipped.append(str(err))
                    continue
                for frame, detections in enumerate(found):
                    rows.extend({**row, "frame": frame} for row in detections.to_coco(str(path)))
                continue
            if bar is not None:
                bar.update()
            try:
                image, fixes = load_image(path)
            except OnedetError as err:
                skipped.append(str(err))
                continue
            (detections,) = detector([image], threshold=threshold)
            rows.extend(detections.to_coco(str(path)))
            draw_detections(image, detections).save(out / _output_name(path, used))
            if labels is not None:
                labels.add(Path(path), image, fixes, detections)
    if bar is not None:
        bar.close()
    if labels is not None and labels.count:
        outside = f"; {labels.outside} boxes wholly outside their image left out" if labels.outside else ""
        print(
            f"wrote {labels.folder} ({labels.count} images; YOLO: images/, labels/, data.yaml{outside})",
            file=sys.stderr,
        )
    elif labels is not None:
        print("--dataset: no image was read (videos are not part of it), so no dataset was written", file=sys.stderr)
    if skipped:
        print(f"skipped {len(skipped)} unreadable file(s):", *skipped, sep="\n  ", file=sys.stderr)
        if len(skipped) == len(files):
            raise OnedetError(f"none of the {len(files)} images and videos could be read (first: {skipped[0]})")
    (out / "detections.json").write_text(json.dumps(rows, indent=1) + "\n")
    return rows
